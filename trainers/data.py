"""Data sets for the trainers, all offline-capable.

Small sets (digits, MNIST-1D, MNIST, synthetic) are held as tensors on the training device and
batched by ``TensorLoader`` (a seeded permutation per epoch: no worker processes, no per-sample
Python). CIFAR goes through torchvision's own dataset class and a ``DataLoader`` with the
standard augmentation (4-pixel pad + random crop, horizontal flip, normalization).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor


class DataError(RuntimeError):
    """Data that cannot be loaded; the message says what to do."""


@dataclass
class Data:
    train: Iterable[tuple[Tensor, Tensor]]
    test: Iterable[tuple[Tensor, Tensor]]
    input_shape: tuple[int, ...]  # one sample, e.g. (1, 28, 28) or (40,)
    num_classes: int
    num_train: int

    def probe_batch(self, size: int, seed: int) -> tuple[Tensor, Tensor]:
        """A fixed batch of training samples for the curvature probes, drawn with its own
        generator so that the training data order and the global RNG are left alone."""
        g = torch.Generator().manual_seed(10_000 + seed)
        if isinstance(self.train, TensorLoader):
            idx = torch.randperm(len(self.train.y), generator=g)[:size].to(self.train.x.device)
            return self.train.x[idx], self.train.y[idx]
        dataset = self.train.dataset  # a torchvision dataset behind a DataLoader
        idx = torch.randperm(len(dataset), generator=g)[:size].tolist()
        with torch.random.fork_rng(devices=[]):  # its random augmentation must not shift training's RNG
            torch.manual_seed(seed)
            samples = [dataset[i] for i in idx]
        return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


class TensorLoader:
    """Batches of in-memory tensors; shuffled with its own seeded generator each epoch."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.x.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.x[idx], self.y[idx]


def _standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = train.mean(), train.std()
    return (train - mean) / std, (test - mean) / std


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
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)
    as_y = lambda a: torch.tensor(a, dtype=torch.long)
    return as_x(data["x"]), as_y(data["y"]), as_x(data["x_test"]), as_y(data["y_test"])


def _mnist(root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from torchvision.datasets import MNIST

    try:
        train = MNIST(str(root), train=True, download=False)
        test = MNIST(str(root), train=False, download=False)
    except RuntimeError as exc:
        raise DataError(
            f"MNIST not found under {root}/MNIST/raw: write it there with "
            f"`python ../shared/datasets/mnist_to_torchvision.py {root}` or pass --data-root"
        ) from exc
    as_x = lambda d: (d.data.float() / 255.0).unsqueeze(1)
    return as_x(train), train.targets, as_x(test), test.targets


def _synthetic(seed: int, n_train: int = 2048, n_test: int = 512, shape=(3, 32, 32), classes: int = 10):
    """Learnable random images: a fixed random pattern per class plus Gaussian noise."""
    g = torch.Generator().manual_seed(1234 + seed)
    patterns = torch.randn(classes, *shape, generator=g)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = 0.5 * patterns[y] + torch.randn(n_train + n_test, *shape, generator=g)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar(name: str, root: Path, batch_size: int, seed: int, download: bool) -> Data:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    mean, std = CIFAR_STATS[name]
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    try:
        train = cls(str(root), train=True, download=download, transform=transforms.Compose(augment + normalize))
        test = cls(str(root), train=False, download=download, transform=transforms.Compose(normalize))
    except RuntimeError as exc:
        folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        raise DataError(
            f"{name} not found under {root}/{folder}: pass --data-root to the folder that holds it, "
            f"or --download on a machine with internet"
        ) from exc
    generator = torch.Generator().manual_seed(seed)
    return Data(
        train=DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=2),
        test=DataLoader(test, batch_size=512, shuffle=False, num_workers=2),
        input_shape=(3, 32, 32),
        num_classes=len(train.classes),
        num_train=len(train),
    )


def load_data(name: str, batch_size: int, seed: int = 0, data_root: str | Path = "data",
              device: torch.device | str = "cpu", download: bool = False) -> Data:
    """Load a data set by name, ready for training on ``device``."""
    root = Path(data_root)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, batch_size, seed, download)
    if name == "digits":
        xtr, ytr, xte, yte = _digits()
    elif name == "mnist1d":
        xtr, ytr, xte, yte = _mnist1d()
    elif name == "mnist":
        xtr, ytr, xte, yte = _mnist(root)
    elif name == "synthetic":
        xtr, ytr, xte, yte = _synthetic(seed)
    else:
        raise DataError(f"unknown dataset {name!r}")
    xtr, xte = _standardize(xtr, xte)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    to = lambda t: t.to(device)
    return Data(
        train=TensorLoader(to(xtr), to(ytr), batch_size, shuffle=True, seed=seed),
        test=TensorLoader(to(xte), to(yte), 1024, shuffle=False),
        input_shape=tuple(xtr.shape[1:]),
        num_classes=num_classes,
        num_train=len(ytr),
    )
