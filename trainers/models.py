"""Models for the trainers: a small CNN (``cnn``; ``cnn_bn`` with BatchNorm after each conv) and
an MLP for CPU-scale runs; the paper's VGG-19 and a
ResNet-18 for CIFAR (32x32 inputs), and torchvision's ResNet-50 for ImageNet."""

from __future__ import annotations

import math

from torch import nn

from .config import MODELS


class ModelError(ValueError):
    """A model that does not fit the data; the message says which would."""


class SmallCNN(nn.Module):
    """Three 3x3 conv layers (ReLU, max-pool) and one linear classifier: works on 8x8 digits and
    28x28 MNIST alike thanks to the adaptive pool. Piecewise linear in each layer's weights unless
    ``batchnorm`` is set."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, batchnorm: bool = False) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
            if pool:
                layers.append(nn.MaxPool2d(2))
            return layers

        self.features = nn.Sequential(
            *block(in_channels, width, True),
            *block(width, 2 * width, True),
            *block(2 * width, 2 * width, False),
            nn.AdaptiveMaxPool2d(2),
        )
        self.classifier = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG19(nn.Module):
    """The CIFAR VGG-19: 16 conv layers with BatchNorm and a single fully connected classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


class ResNet18(nn.Module):
    """The CIFAR ResNet-18 (He et al. 2016, as in most CIFAR code): a 3x3 stem without max-pool,
    four stages of two BasicBlocks (64, 128, 256, 512 channels), global average pool, one FC."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
            blocks.append(BasicBlock(cin, cout, stride))
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.classifier(self.layers(self.stem(x)).mean(dim=(2, 3)))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, dataset: str = "") -> nn.Module:
    """Build a model by name for inputs of ``input_shape`` (one sample)."""
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes)
    if name in ("cnn", "cnn_bn"):
        if len(input_shape) != 3:
            raise ModelError(
                f"--model {name} needs images, but {dataset or 'this data set'} has inputs of shape "
                f"{tuple(input_shape)}: use --model mlp"
            )
        return SmallCNN(input_shape[0], num_classes, batchnorm=name == "cnn_bn")
    if name == "vgg19":
        if tuple(input_shape) != (3, 32, 32):
            raise ModelError(
                f"--model vgg19 needs 32x32 RGB images (cifar10, cifar100, synthetic), "
                f"not {dataset or 'inputs of shape'} {tuple(input_shape)}"
            )
        return VGG19(num_classes)
    if name == "resnet18":
        if tuple(input_shape) != (3, 32, 32):
            raise ModelError(
                f"--model resnet18 is the CIFAR variant and needs 32x32 RGB images, "
                f"not {dataset or 'inputs of shape'} {tuple(input_shape)}: use resnet50 for ImageNet"
            )
        return ResNet18(num_classes)
    if name == "resnet50":
        if len(input_shape) != 3 or input_shape[0] != 3:
            raise ModelError(
                f"--model resnet50 needs RGB images, not {dataset or 'inputs of shape'} {tuple(input_shape)}"
            )
        from torchvision.models import resnet50  # torchvision's, untouched: the paper's ImageNet model

        return resnet50(weights=None, num_classes=num_classes)
    raise ModelError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
