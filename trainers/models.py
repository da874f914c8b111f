"""Models for the trainers: a small CNN and an MLP for CPU-scale runs, VGG-19 for CIFAR."""
from __future__ import annotations

import math

from torch import nn


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


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, dataset: str = "") -> nn.Module:
    """Build a model by name for inputs of ``input_shape`` (one sample)."""
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes)
    if name == "cnn":
        if len(input_shape) != 3:
            raise ModelError(f"--model cnn needs images, but {dataset or 'this data set'} has inputs of shape "
                             f"{tuple(input_shape)}: use --model mlp")
        return SmallCNN(input_shape[0], num_classes)
    if name == "vgg19":
        if tuple(input_shape) != (3, 32, 32):
            raise ModelError(f"--model vgg19 needs 32x32 RGB images (cifar10, cifar100, synthetic), "
                             f"not {dataset or 'inputs of shape'} {tuple(input_shape)}")
        return VGG19(num_classes)
    raise ModelError(f"unknown model {name!r}: choose from cnn, mlp, vgg19")
