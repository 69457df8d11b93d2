"""LeNet-5 style network, the historical baseline for small grey digit images.

conv 6 (5x5) -> ReLU -> maxpool 2 -> conv 16 (5x5) -> ReLU -> maxpool 2 -> fc 120 -> fc 84 -> classes.
Both convs use padding=2 ("same" size), so 8x8 digits, 28x28 MNIST and 32x32x3 CIFAR all fit:
the spatial side is only halved by the two pools (8 -> 2, 28 -> 7, 32 -> 8).
"""

from __future__ import annotations

from torch import nn


def build_lenet(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build LeNet-5 (padding=2 on both convs) for inputs of shape ``(C, H, W)``."""
    channels, height, width = in_shape
    flat_features = 16 * (height // 2 // 2) * (width // 2 // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat_features, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
