"""Registry of CNNs by name, so sweeps can pick an architecture from a config string.

The registry is plain data (``MODELS``); ``build_model`` is the one place that
turns a name into a freshly initialised ``torch.nn.Module``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from models.fastnet import build_fastnet
from models.lenet import build_lenet
from models.resnet import build_resnet18
from models.simple_cnn import build_simple_cnn

InShape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelSpec:
    """A named model: ``build(in_shape=(C, H, W), num_classes)`` returns a fresh module."""

    name: str
    build: Callable[[InShape, int], torch.nn.Module]
    description: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="simple_cnn",
            build=build_simple_cnn,
            description="CIFAR-10 tutorial CNN: 3 convs (32-64-64) + dense 64; 122,570 params on CIFAR.",
        ),
        ModelSpec(
            name="lenet",
            build=build_lenet,
            description="LeNet-5 style: conv 6 -> conv 16 (5x5, padding 2) -> fc 120 -> fc 84.",
        ),
        ModelSpec(
            name="resnet18",
            build=build_resnet18,
            description="CIFAR ResNet-18: 3x3 stem, no max-pool, BasicBlocks [2,2,2,2], ~11M params.",
        ),
        ModelSpec(
            name="fastnet",
            build=build_fastnet,
            description="airbench-style speed-run net: 2x2 stem + 3 conv groups (64,256,256), ~2M params.",
        ),
    )
}


def build_model(name: str, in_shape: InShape, num_classes: int) -> torch.nn.Module:
    """Build the registered model ``name`` for inputs of shape ``(C, H, W)``."""
    try:
        spec = MODELS[name]
    except KeyError:
        valid = ", ".join(sorted(MODELS))
        raise KeyError(f"unknown model {name!r}; choose from: {valid}") from None
    return spec.build(tuple(in_shape), num_classes)


__all__ = ["MODELS", "ModelSpec", "build_model"]
