"""Registry of CNNs by name, so sweeps can pick an architecture from a config string.

The registry is plain data (``MODELS``); ``build_model`` is the one place that
turns a name into a freshly initialised ``torch.nn.Module``.

Importing this package does not import torch, so the CLI can list and validate models in a
fraction of a second: each spec's ``build`` imports its architecture module (and with it
torch) on its first call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

InShape = tuple[int, int, int]


@dataclass(frozen=True)
class _LazyBuilder:
    """The builder ``"module:function"``, imported (and with it torch) when first called."""

    target: str

    def __call__(self, in_shape: InShape, num_classes: int) -> torch.nn.Module:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)(in_shape, num_classes)


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
            build=_LazyBuilder("models.simple_cnn:build_simple_cnn"),
            description="CIFAR-10 tutorial CNN: 3 convs (32-64-64) + dense 64; 122,570 params on CIFAR.",
        ),
        ModelSpec(
            name="lenet",
            build=_LazyBuilder("models.lenet:build_lenet"),
            description="LeNet-5 style: conv 6 -> conv 16 (5x5, padding 2) -> fc 120 -> fc 84.",
        ),
        ModelSpec(
            name="resnet18",
            build=_LazyBuilder("models.resnet:build_resnet18"),
            description="CIFAR ResNet-18: 3x3 stem, no max-pool, BasicBlocks [2,2,2,2], ~11M params.",
        ),
        ModelSpec(
            name="fastnet",
            build=_LazyBuilder("models.fastnet:build_fastnet"),
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


def __getattr__(name: str):
    """PEP 562: ``from models import build_lenet`` etc. still work, importing torch on access."""
    for spec in MODELS.values():
        module, _, function = getattr(spec.build, "target", "").partition(":")
        if function == name:
            return getattr(importlib.import_module(module), function)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODELS", "ModelSpec", "build_model"]
