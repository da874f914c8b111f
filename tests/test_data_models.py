"""Paper-scale models and data: each model trains a step; CIFAR read from files in CIFAR's own
pickle format; the on-device augmentation against torchvision's; ImageNet's ImageFolder; ranks'
shares of a global batch."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from trainers.data import DeviceCifarLoader, TensorLoader, crop_flip, load_data, read_cifar
from trainers.models import ResNet18, VGG19, build_model


@pytest.mark.parametrize("name, shape, classes", [("vgg19", (3, 32, 32), 10), ("resnet18", (3, 32, 32), 100),
                                                  ("resnet50", (3, 64, 64), 7)])
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
        return {"batch_label": "test", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                label_key: rng.integers(0, classes, n).tolist(), "filenames": [f"{i}.png" for i in range(n)]}

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        files = {f"data_batch_{i}": batch(n_train // 5) for i in range(1, 6)}
        files["test_batch"] = batch(n_test)
        files["batches.meta"] = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n_train // 5}
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        files = {"train": batch(n_train), "test": batch(n_test),
                 "meta": {"fine_label_names": [f"c{i}" for i in range(100)],
                          "coarse_label_names": [f"s{i}" for i in range(20)]}}
    for fname, content in files.items():
        with open(folder / fname, "wb") as f:
            pickle.dump(content, f, protocol=2)
    return files


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loader_reads_cifar_pickle_files(tmp_path, name):
    files = write_cifar(tmp_path, name)
    xtr, ytr, xte, yte, classes = read_cifar(name, tmp_path)
    first = files["data_batch_1"] if name == "cifar10" else files["train"]
    assert xtr.shape == (50, 3, 32, 32) and xte.shape == (20, 3, 32, 32) and len(classes) == (10 if name == "cifar10" else 100)
    # Row-major 3072 = 3 channel planes of 32x32, as the CIFAR page documents.
    np.testing.assert_array_equal(xtr[0, 1, 2, 3], first["data"][0][1024 + 2 * 32 + 3])
    data = load_data(name, batch_size=16, data_root=tmp_path, workers=0)
    assert data.num_train == 50 and data.num_classes == len(classes) and len(data.train) == 4
    data.train.set_epoch(0)
    x, y = next(iter(data.train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x_test, y_test = next(iter(data.test))
    assert x_test.shape == (20, 3, 32, 32)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (
        {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}[name],
        {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}[name]))
    torch.testing.assert_close(x_test[0], (torch.from_numpy(xte[0]).float() / 255 - mean) / std)
    assert torch.equal(y_test, torch.from_numpy(yte))
    # The same files through the on-device pipeline (here on the CPU): the same test set.
    device_loader = DeviceCifarLoader(xte, yte, mean.flatten().tolist(), std.flatten().tolist(), 8, False, "cpu")
    xd, _ = next(iter(device_loader))
    torch.testing.assert_close(xd, x_test[:8], rtol=1e-5, atol=1e-5)


def test_missing_cifar_says_where_to_put_it(tmp_path):
    from trainers.data import DataError

    with pytest.raises(DataError, match="cifar10 not found under .*cifar-10-batches-py.*--download"):
        load_data("cifar10", batch_size=8, data_root=tmp_path)


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
    from trainers.data import DataError

    with pytest.raises(DataError, match="ImageNet not found"):
        load_data("imagenet", batch_size=4, data_root=tmp_path / "train", workers=0)
