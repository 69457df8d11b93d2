"""Momentum formulations against trajectories computed by hand (plain NumPy, no torch.optim).

The objective is the quadratic f(p) = 0.5 * sum(a_i * p_i^2), whose gradient is a * p, and the
learning rate changes in the middle of the run, which is exactly where the formulations part ways.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optim
from optim.momentum import FORMULATIONS

A = np.array([1.0, 3.0])
P0 = np.array([1.0, -2.0])
MU = 0.9
LRS = [0.1, 0.1, 0.1, 0.03, 0.03, 0.03, 0.03]  # LR change after 3 steps


# ---- hand-written references: one function per formulation, (p, state, g, lr, mu, nesterov) -----


def _pytorch(p, b, g, lr, mu, nesterov):
    b = g.copy() if b is None else mu * b + g  # torch seeds the buffer with the first gradient
    step = g + mu * b if nesterov else b
    return p - lr * step, b


def _heavy_ball(p, v, g, lr, mu, nesterov):
    v = np.zeros_like(p) if v is None else v
    v = mu * v + lr * g
    step = mu * v + lr * g if nesterov else v
    return p - step, v


def _ema(p, v, g, lr, mu, nesterov):
    v = np.zeros_like(p) if v is None else v
    v = mu * v + (1.0 - mu) * g
    direction = mu * v + (1.0 - mu) * g if nesterov else v
    return p - lr * direction, v


REFERENCE = {"pytorch": _pytorch, "heavy_ball": _heavy_ball, "ema": _ema}


def reference_trajectory(formulation, nesterov, lrs, mu=MU, weight_decay=0.0):
    update = REFERENCE[formulation]  # KeyError: a new formulation needs a reference here
    p, state, out = P0.copy(), None, []
    for lr in lrs:
        g = A * p + weight_decay * p
        p, state = update(p, state, g, lr, mu, nesterov)
        out.append(p.copy())
    return out


def torch_trajectory(formulation, nesterov, lrs, mu=MU, weight_decay=0.0):
    param = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    hp = {"lr": lrs[0], "momentum": mu, "formulation": formulation}
    if weight_decay:
        hp["weight_decay"] = weight_decay
    opt = optim.build_optimizer("nesterov" if nesterov else "momentum", [param], hp)
    a = torch.tensor(A, dtype=torch.float64)
    out = []
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        (0.5 * (a * param * param).sum()).backward()
        opt.step()
        out.append(param.detach().numpy().copy())
    return out


def test_reference_covers_every_formulation():
    assert set(REFERENCE) == set(FORMULATIONS)


@pytest.mark.parametrize("nesterov", [False, True], ids=["classic", "nesterov"])
@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_trajectory_matches_hand_computation(formulation, nesterov):
    expected = reference_trajectory(formulation, nesterov, LRS)
    got = torch_trajectory(formulation, nesterov, LRS)
    assert len(got) == len(LRS) >= 6
    for step, (e, g) in enumerate(zip(expected, got)):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-6, err_msg=f"{formulation} step {step}")
    # the run actually moved towards the minimum
    assert np.abs(got[-1]).sum() < np.abs(P0).sum()


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_weight_decay_adds_to_gradient(formulation):
    wd = 0.5
    expected = reference_trajectory(formulation, True, LRS, weight_decay=wd)
    got = torch_trajectory(formulation, True, LRS, weight_decay=wd)
    for step, (e, g) in enumerate(zip(expected, got)):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-6, err_msg=f"{formulation} step {step}")
    without = torch_trajectory(formulation, True, LRS)
    assert np.abs(got[-1] - without[-1]).max() > 1e-3  # weight decay made a difference


def test_hand_reference_agrees_with_torch_sgd():
    """Sanity check of the reference itself against torch.optim.SGD (pytorch formulation only)."""
    for nesterov in (False, True):
        param = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([param], lr=LRS[0], momentum=MU, nesterov=nesterov)
        a = torch.tensor(A, dtype=torch.float64)
        for lr, e in zip(LRS, reference_trajectory("pytorch", nesterov, LRS)):
            opt.param_groups[0]["lr"] = lr
            opt.zero_grad()
            (0.5 * (a * param * param).sum()).backward()
            opt.step()
            np.testing.assert_allclose(param.detach().numpy(), e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True], ids=["classic", "nesterov"])
def test_formulations_coincide_at_constant_lr(nesterov):
    constant = [0.1] * 7
    pytorch = torch_trajectory("pytorch", nesterov, constant)
    heavy_ball = torch_trajectory("heavy_ball", nesterov, constant)
    ema = torch_trajectory("ema", nesterov, [0.1 / (1 - MU)] * 7)
    for step in range(len(constant)):
        np.testing.assert_allclose(heavy_ball[step], pytorch[step], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ema[step], pytorch[step], rtol=0, atol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True], ids=["classic", "nesterov"])
def test_formulations_diverge_after_lr_change(nesterov):
    pytorch = torch_trajectory("pytorch", nesterov, LRS)
    heavy_ball = torch_trajectory("heavy_ball", nesterov, LRS)
    ema = torch_trajectory("ema", nesterov, [lr / (1 - MU) for lr in LRS])
    for step in range(3):  # same LR so far: identical
        np.testing.assert_allclose(heavy_ball[step], pytorch[step], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ema[step], pytorch[step], rtol=0, atol=1e-12)
    # after the change, pytorch rescales the whole buffer by the new LR, heavy_ball does not
    assert np.abs(heavy_ball[3] - pytorch[3]).max() > 1e-2
    assert np.abs(heavy_ball[-1] - pytorch[-1]).max() > 1e-2
    # ema (lr/(1-mu)) rescales its buffer like pytorch, so it stays with pytorch and away from heavy_ball
    np.testing.assert_allclose(ema[-1], pytorch[-1], rtol=0, atol=1e-12)
    assert np.abs(ema[-1] - heavy_ball[-1]).max() > 1e-2


def test_momentum_sgd_rejects_bad_arguments():
    from optim.momentum import MomentumSGD

    param = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="formulation"):
        MomentumSGD([param], lr=0.1, formulation="pytorch")
    with pytest.raises(ValueError, match="momentum"):
        MomentumSGD([param], lr=0.1, momentum=1.0)
