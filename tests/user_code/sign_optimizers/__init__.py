"""A user's own optimizer, outside the project's packages: the tests import it as ``sign_optimizers``
(with tests/user_code on the path) and Ray ships it to workers that have never seen it."""

from __future__ import annotations

import torch


class SignMomentum(torch.optim.Optimizer):
    """signSGD with momentum (Bernstein et al. 2018): p -= lr * sign(m), m = beta * m + (1 - beta) * g."""

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.9, weight_decay: float = 0.0):
        # where this module was imported from travels in every checkpoint: a test checks that a
        # worker imported the copy Ray shipped, not the file beside the driver
        super().__init__(params, {"lr": lr, "beta": beta, "weight_decay": weight_decay, "source": __file__})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                m = state["momentum"]
                m.mul_(group["beta"]).add_(p.grad, alpha=1 - group["beta"])
                p.mul_(1 - group["lr"] * group["weight_decay"]).add_(m.sign(), alpha=-group["lr"])
