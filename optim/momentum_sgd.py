"""Momentum SGD in the two formulations torch.optim.SGD does not implement exactly.

The three formulations agree while the learning rate is constant (up to a rescaling of lr), but
not in how a changing LR or momentum acts, which is why a comparison must say which one it ran:

* ``pytorch``    b <- mu*b + g;          p <- p - lr*b          (torch.optim.SGD, used as is)
* ``heavy_ball`` v <- mu*v + lr*g;       p <- p - v             (Polyak; the LR lives inside v)
* ``ema``        v <- beta*v + (1-beta)*g; p <- p - lr*v        (exponential moving average)

torch.optim.SGD with ``dampening=beta`` is *not* the EMA form: it seeds the buffer with the
first raw gradient (v1 = g instead of (1-beta)*g), so the first steps are 1/(1-beta) too large.
Hence this class, with v0 = 0 for both formulations.

``ema`` is ``pytorch`` with lr scaled by (1-beta) at every step, so searching beta also moves the
effective step; ``heavy_ball`` departs from ``pytorch`` when the LR changes, since the velocity
keeps the old LR's steps and decays them, instead of rescaling them at once.

Nesterov variants apply the look-ahead in each formulation's own units:
heavy_ball p <- p - (mu*v_new + lr*g); ema p <- p - lr*(beta*v_new + (1-beta)*g).

This module imports torch; ``optim.momentum`` holds the torch-free names (``FORMULATIONS``) and
re-exports ``MomentumSGD`` on first access.
"""

from __future__ import annotations

import torch


class MomentumSGD(torch.optim.Optimizer):
    """SGD with heavy-ball or EMA momentum, optional Nesterov look-ahead and L2 weight decay."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        formulation: str = "heavy_ball",
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        if formulation not in ("heavy_ball", "ema"):
            raise ValueError(f"formulation must be heavy_ball or ema, got {formulation!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        defaults = dict(lr=lr, momentum=momentum, formulation=formulation, nesterov=nesterov, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            ema = group["formulation"] == "ema"
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                v = state.get("velocity")
                if v is None:
                    v = state["velocity"] = torch.zeros_like(p)
                if ema:
                    v.mul_(mu).add_(g, alpha=1.0 - mu)
                    direction = v.mul(mu).add_(g, alpha=1.0 - mu) if group["nesterov"] else v
                    p.add_(direction, alpha=-lr)
                else:
                    v.mul_(mu).add_(g, alpha=lr)
                    step = v.mul(mu).add_(g, alpha=lr) if group["nesterov"] else v
                    p.sub_(step)
        return loss
