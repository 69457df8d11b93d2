"""A fast CIFAR net in the style of the CIFAR-10 speed-run record code (KellerJordan/cifar10-airbench).

It gives the sweeps a modern, well-tuned ~2M-parameter architecture: a 2x2 conv stem to 24
channels (BatchNorm + GELU), three conv groups of widths 64/256/256, each
conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU, then a global max pool and a
bias-free linear head whose logits are scaled by a fixed 1/9 as in airbench.
Pools use ``ceil_mode=True`` so small inputs (8x8 -> 7 -> 4 -> 2 -> 1) still work.
"""

from __future__ import annotations

import torch
from torch import nn

STEM_WIDTH = 24
GROUP_WIDTHS = (64, 256, 256)
OUTPUT_SCALE = 1 / 9


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class FastNet(nn.Module):
    """airbench-style CIFAR net returning logits of shape (N, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, STEM_WIDTH, 2, padding=0),
            nn.BatchNorm2d(STEM_WIDTH),
            nn.GELU(),
        )
        groups = []
        channels = STEM_WIDTH
        for width in GROUP_WIDTHS:
            groups.append(ConvGroup(channels, width))
            channels = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(channels, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.groups(self.stem(x)))
        return self.head(torch.flatten(features, 1)) * OUTPUT_SCALE


def build_fastnet(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the airbench-style net for inputs of shape ``(C, H, W)`` (H, W >= 2)."""
    return FastNet(in_shape[0], num_classes)
