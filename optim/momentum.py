"""The momentum formulations, as data: ``FORMULATIONS`` names the values ``formulation`` takes.

``optim.momentum_sgd`` explains them and implements the two that torch.optim.SGD does not
(``MomentumSGD``). That module imports torch, so it is imported on first access to
``optim.momentum.MomentumSGD``; importing this module stays torch-free for config validation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optim.momentum_sgd import MomentumSGD

FORMULATIONS = ("pytorch", "heavy_ball", "ema")

__all__ = ["FORMULATIONS", "MomentumSGD"]


def __getattr__(name: str) -> Any:  # PEP 562: import torch only when the optimizer is wanted
    if name == "MomentumSGD":
        from optim.momentum_sgd import MomentumSGD

        return MomentumSGD
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
