"""CIFAR variant of ResNet-18, the large, BatchNorm-heavy model in the sweeps.

3x3 stem conv (64, stride 1, no max-pool), BasicBlocks [2, 2, 2, 2] with widths
64/128/256/512 and strides 1/2/2/2, adaptive average pool, linear head. The adaptive
pool lets it run on anything from 8x8 digits up to 32x32 CIFAR images.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 returning logits of shape (N, num_classes)."""

    STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (width, stride of the first block)
    BLOCKS_PER_STAGE = 2

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        blocks = []
        channels = 64
        for width, stride in self.STAGES:
            for block_index in range(self.BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(channels, width, stride if block_index == 0 else 1))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.blocks(self.stem(x)))
        return self.head(torch.flatten(features, 1))


def build_resnet18(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build CIFAR ResNet-18 for inputs of shape ``(C, H, W)`` (any H, W >= 1)."""
    return ResNet18(in_shape[0], num_classes)
