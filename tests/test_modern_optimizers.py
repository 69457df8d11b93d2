"""The modern optimizers (optim/modern.py) against their libraries and their published rules.

* Every registry build equals the library's optimizer built by hand with the same (non-default)
  hyperparameters, parameter for parameter, state and param groups included, over a short
  trajectory on ``simple_cnn``: a dropped, swapped or ignored hyperparameter shows up there.
* Muon: which of simple_cnn's tensors timm orthogonalizes and which go to its AdamW fallback.
* Lion and Schedule-Free SGD/AdamW: trajectories computed by hand (NumPy, float64) from the
  papers' update rules, like tests/test_momentum.py does for the momentum formulations.

The search spaces are checked with every other spec's in tests/test_optimizers.py.
"""

from __future__ import annotations

import numpy as np
import prodigyopt
import pytest
import schedulefree
import torch

import models
import optim
from optim import modern
from optim.optimizers import OPTIMIZERS


class _LazyTimm:
    """``timm.optim``, imported when a test first builds from it: importing timm costs about 2 s
    (its model registry), which the quick tier does not pay (the timm tests are ``slow``)."""

    def __getattr__(self, name):
        import timm.optim

        return getattr(timm.optim, name)


TIMM = _LazyTimm()
STEPS = 10
# Prodigy starts from D = d0 = 1e-6 and keeps it for its first ~10 steps on simple_cnn (weights
# move by ~1e-5): 30 steps let D grow, so d_coef shows in the weights, beyond ATOL
STEPS_FOR = {"prodigy": 30}
ATOL = 1e-6
IN_SHAPE, CLASSES, BATCH = (1, 8, 8), 10, 16


def _sf_train(optimizer):
    optimizer.train()  # Schedule-Free is built in eval mode; the registry hands it over training
    return optimizer


# (name, the registry's hyperparameters (every one off its default unless listed as kept), the
# ones kept at their default, the library's own constructor written out with the same values)
CASES = [
    (
        "muon",
        {"lr": 0.02, "momentum": 0.9, "nesterov": False, "weight_decay": 0.05, "beta1": 0.8, "beta2": 0.9},
        (),
        lambda ps: TIMM.Muon(ps, lr=0.02, momentum=0.9, nesterov=False, weight_decay=0.05, betas=(0.8, 0.9)),
    ),
    (  # Nesterov: Muon's Nesterov step, and NAdamW (not AdamW) for the fallback tensors
        "muon",
        {"lr": 0.02, "momentum": 0.85, "weight_decay": 0.05, "beta1": 0.8, "beta2": 0.9},
        ("nesterov",),
        lambda ps: TIMM.Muon(ps, lr=0.02, momentum=0.85, nesterov=True, weight_decay=0.05, betas=(0.8, 0.9)),
    ),
    (
        "lion",
        {"lr": 2e-3, "beta1": 0.8, "beta2": 0.95, "weight_decay": 0.3},
        (),
        lambda ps: TIMM.Lion(ps, lr=2e-3, betas=(0.8, 0.95), weight_decay=0.3),
    ),
    (
        "nadamw",
        {"lr": 0.01, "beta1": 0.8, "beta2": 0.95, "weight_decay": 0.05},
        (),
        lambda ps: TIMM.NAdamW(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.05),
    ),
    (
        "lamb",
        {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "weight_decay": 0.05},
        (),
        lambda ps: TIMM.Lamb(ps, lr=0.05, betas=(0.8, 0.95), weight_decay=0.05),
    ),
    (
        "lars",
        {"lr": 0.5, "momentum": 0.8, "weight_decay": 0.01, "trust_coeff": 0.01},
        (),
        lambda ps: TIMM.Lars(ps, lr=0.5, momentum=0.8, weight_decay=0.01, trust_coeff=0.01, always_adapt=True),
    ),
    (  # no weight decay: timm skips the trust ratio there unless always_adapt, which the registry sets
        "lars",
        {"lr": 0.5, "momentum": 0.8, "trust_coeff": 0.01},
        ("weight_decay",),
        lambda ps: TIMM.Lars(ps, lr=0.5, momentum=0.8, weight_decay=0.0, trust_coeff=0.01, always_adapt=True),
    ),
    (
        "adan",
        {"lr": 0.01, "beta1": 0.9, "beta2": 0.8, "beta3": 0.95, "weight_decay": 0.05},
        (),
        lambda ps: TIMM.Adan(ps, lr=0.01, betas=(0.9, 0.8, 0.95), weight_decay=0.05),
    ),
    (
        "adafactor",
        {"lr": 0.03, "beta2_decay": -0.6, "weight_decay": 0.05},
        (),
        lambda ps: torch.optim.Adafactor(ps, lr=0.03, beta2_decay=-0.6, weight_decay=0.05),
    ),
    (
        "sf_sgd",
        {"lr": 0.2, "momentum": 0.8, "weight_decay": 0.01},
        (),
        lambda ps: _sf_train(schedulefree.SGDScheduleFree(ps, lr=0.2, momentum=0.8, weight_decay=0.01)),
    ),
    (
        "sf_adamw",
        {"lr": 0.01, "beta1": 0.8, "beta2": 0.95, "weight_decay": 0.05},
        (),
        lambda ps: _sf_train(schedulefree.AdamWScheduleFree(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.05)),
    ),
    (  # LR-free: lr stays at its default 1.0
        "prodigy",
        {"d_coef": 2.0, "beta1": 0.8, "beta2": 0.95, "weight_decay": 0.05},
        ("lr",),
        lambda ps: prodigyopt.Prodigy(ps, lr=1.0, betas=(0.8, 0.95), weight_decay=0.05, d_coef=2.0),
    ),
]
CASE_IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(CASES)]


# ---- two copies of one model, trained on the same batches; a helper that lists every difference -----


def _model():
    torch.manual_seed(0)
    return models.build_model("simple_cnn", IN_SHAPE, CLASSES)


def _batches(steps=STEPS):
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(BATCH, *IN_SHAPE, generator=gen), torch.randint(0, CLASSES, (BATCH,), generator=gen))
        for _ in range(steps)
    ]


def _train(build, steps=STEPS):
    """A fresh ``simple_cnn`` (seed 0) and ``build(parameters)`` after ``steps`` steps on fixed batches."""
    model = _model()
    opt = build(model.parameters())
    for x, y in _batches(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def _differ(a, b) -> str | None:
    """Why values ``a`` and ``b`` (a tensor, a number, a tuple, anything else) differ, or None."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        if a.shape != b.shape:
            return f"shapes {tuple(a.shape)} != {tuple(b.shape)}"
        gap = (a - b).abs().max().item() if a.numel() else 0.0
        return None if gap <= ATOL else f"max |diff| {gap:.3g}"
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)):
        if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
            why = [w for w in map(_differ, a, b) if w]
            return why[0] if why else None
        return None if a == b else f"{a!r} != {b!r}"
    return None if a == b or abs(a - b) <= ATOL else f"{a!r} != {b!r}"  # a == b: inf (Prodigy's growth_rate)


def mismatches(model_a, opt_a, model_b, opt_b) -> list[str]:
    """Every difference beyond ATOL between two trained models and their optimizers: parameters
    (``param <name>``), per-parameter state (``state <name>.<key>``), param groups (``group``)."""
    out = []
    params_a, params_b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    for name, pa in params_a.items():
        pb = params_b[name]
        if why := _differ(pa.detach(), pb.detach()):
            out.append(f"param {name}: {why}")
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        if set(sa) != set(sb):
            out.append(f"state {name}: keys {sorted(sa)} != {sorted(sb)}")
        for key in sorted(set(sa) & set(sb)):
            if why := _differ(sa[key], sb[key]):
                out.append(f"state {name}.{key}: {why}")
    if len(opt_a.param_groups) != len(opt_b.param_groups):
        out.append(f"group: {len(opt_a.param_groups)} groups != {len(opt_b.param_groups)}")
    for i, (ga, gb) in enumerate(zip(opt_a.param_groups, opt_b.param_groups)):
        if set(ga) != set(gb):
            out.append(f"group {i}: keys {sorted(set(ga) ^ set(gb))} in one only")
        for key in sorted(set(ga) & set(gb) - {"params"}):
            if why := _differ(ga[key], gb[key]):
                out.append(f"group {i}.{key}: {why}")
        names = {id(p): n for n, p in params_a.items()} | {id(p): n for n, p in params_b.items()}
        if [names[id(p)] for p in ga["params"]] != [names[id(p)] for p in gb["params"]]:
            out.append(f"group {i}: different parameters")
    return out


def _registry(name, hp):
    return lambda ps: optim.build_optimizer(name, ps, hp)


# ---- the registry against the library built by hand ------------------------------------------------


def test_cases_cover_every_modern_optimizer():
    assert {name for name, *_ in CASES} == set(modern.SPACES)
    for name, hp, kept, _ in CASES:
        defaults = OPTIMIZERS[name].defaults
        assert set(hp) | set(kept) == set(defaults), name  # every hyperparameter is set or kept on purpose
        assert not set(hp) & set(kept), name
        for key, value in hp.items():  # non-default, so a dropped one is caught
            assert value != defaults[key], f"{name}.{key} is its default"


@pytest.mark.slow  # ten steps of simple_cnn per case, 12 cases: seconds with the imports, kept off the quick tier
@pytest.mark.parametrize(("name", "hp", "kept", "by_hand"), CASES, ids=CASE_IDS)
def test_registry_build_matches_library(name, hp, kept, by_hand):
    steps = STEPS_FOR.get(name, STEPS)
    model, opt = _train(_registry(name, hp), steps)
    ref_model, ref_opt = _train(by_hand, steps)
    assert type(opt) is type(ref_opt)
    problems = mismatches(model, opt, ref_model, ref_opt)
    assert not problems, f"{name} after {steps} steps:\n" + "\n".join(problems)
    # the run moved the weights well beyond ATOL (a no-op optimizer would match a no-op reference)
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), _model().parameters()))
    assert moved > 30 * ATOL
    if name == "prodigy":
        assert opt.param_groups[0]["d"] > 2 * opt.param_groups[0]["d0"]  # D grew: d_coef took part
    if OPTIMIZERS[name].schedule_free:  # the averaged weights x, evaluated in eval mode
        opt.eval()
        ref_opt.eval()
        problems = mismatches(model, opt, ref_model, ref_opt)
        assert not problems, f"{name} in eval mode:\n" + "\n".join(problems)


# a wrong mapping of each kind: swapped betas, ignored momentum, dropped weight decay, a lost flag,
# a dropped d_coef
WRONG = [
    ("lion", lambda ps: TIMM.Lion(ps, lr=2e-3, betas=(0.95, 0.8), weight_decay=0.3)),
    (
        "muon",
        lambda ps: TIMM.Muon(ps, lr=0.02, momentum=0.95, nesterov=False, weight_decay=0.05, betas=(0.8, 0.9)),
    ),
    ("nadamw", lambda ps: TIMM.NAdamW(ps, lr=0.01, betas=(0.8, 0.95))),
    ("adan", lambda ps: TIMM.Adan(ps, lr=0.01, betas=(0.9, 0.95, 0.8), weight_decay=0.05)),
    ("lars-1", lambda ps: TIMM.Lars(ps, lr=0.5, momentum=0.8, weight_decay=0.0, trust_coeff=0.01)),
    ("prodigy", lambda ps: prodigyopt.Prodigy(ps, lr=1.0, betas=(0.8, 0.95), weight_decay=0.05)),
    (
        "sf_adamw",
        lambda ps: _sf_train(schedulefree.AdamWScheduleFree(ps, lr=0.01, betas=(0.95, 0.8), weight_decay=0.05)),
    ),
]


@pytest.mark.slow  # as above
@pytest.mark.parametrize(("case", "wrong"), WRONG, ids=[c for c, _ in WRONG])
def test_helper_catches_a_wrong_mapping(case, wrong):
    """The comparison fails, on the weights themselves, against a deliberately wrong reference."""
    name, _, index = case.partition("-")
    _, hp, _, _ = [c for c in CASES if c[0] == name][int(index or 0)]
    steps = STEPS_FOR.get(name, STEPS)
    model, opt = _train(_registry(name, hp), steps)
    ref_model, ref_opt = _train(wrong, steps)
    problems = mismatches(model, opt, ref_model, ref_opt)
    assert any(p.startswith("param ") for p in problems), problems


# ---- Muon: which tensors timm orthogonalizes ----------------------------------------------------------


@pytest.mark.slow  # imports timm
def test_muon_routes_kernels_to_muon_and_the_rest_to_the_fallback():
    model, opt = _train(_registry("muon", {"momentum": 0.9, "nesterov": False}), steps=1)
    routed = {name: opt.state[p]["use_muon"] for name, p in model.named_parameters()}
    # conv kernels with several input channels (flattened to out x in*3*3) and dense kernels (the
    # 10x64 head too: both sides >= 4, aspect ratio <= 128); the stem conv (32, 1, 3, 3) has a unit
    # input dimension and goes to the fallback with every bias
    assert sorted(n for n, m in routed.items() if m) == ["11.weight", "3.weight", "6.weight", "9.weight"]
    assert sorted(n for n, m in routed.items() if not m) == [
        "0.bias",
        "0.weight",
        "11.bias",
        "3.bias",
        "6.bias",
        "9.bias",
    ]
    for name, p in model.named_parameters():
        state_keys = {"momentum_buffer"} if routed[name] else {"step", "exp_avg", "exp_avg_sq"}
        assert set(opt.state[p]) - {"use_muon"} == state_keys, name
    (group,) = opt.param_groups
    assert (group["momentum"], group["nesterov"]) == (0.9, False)
    assert group["adjust_lr_fn"] == "match_rms_adamw" and group["fallback_lr_scale"] == 1.0
    nesterov = optim.build_optimizer("muon", [torch.zeros(4, 4)], {"momentum": 0.85, "nesterov": True})
    assert (nesterov.param_groups[0]["momentum"], nesterov.param_groups[0]["nesterov"]) == (0.85, True)


# ---- Lion against its published rule ------------------------------------------------------------------

P0 = np.array([1.0, -2.0, 0.5])
# chosen so the interpolated momentum c has another sign than the gradient at steps 2, 3, 5 and 6
GRADS = np.array(
    [[0.5, -1.0, 0.2], [-0.05, 0.4, -0.1], [0.3, 0.1, 0.3], [-0.2, -0.1, 0.04], [0.1, 0.03, -0.2], [-0.02, -0.3, 0.5]]
)


@pytest.mark.slow  # imports timm
def test_lion_matches_published_rule():
    """Chen et al. 2023, Algorithm 2: c = b1*m + (1-b1)*g; p -= lr*(sign(c) + wd*p); m = b2*m + (1-b2)*g."""
    lr, b1, b2, wd = 0.1, 0.8, 0.95, 0.5
    p, m, expected, flipped = P0.copy(), np.zeros(3), [], 0
    for g in GRADS:
        c = b1 * m + (1 - b1) * g
        flipped += int((np.sign(c) != np.sign(g)).any())
        p = p - lr * (np.sign(c) + wd * p)
        m = b2 * m + (1 - b2) * g
        expected.append(p.copy())
    assert flipped == 4  # the momentum, not the gradient alone, chose some signs

    param = torch.tensor(P0, requires_grad=True)
    opt = optim.build_optimizer("lion", [param], {"lr": lr, "beta1": b1, "beta2": b2, "weight_decay": wd})
    for step, (g, e) in enumerate(zip(GRADS, expected)):
        param.grad = torch.tensor(g)
        opt.step()
        np.testing.assert_allclose(param.detach().numpy(), e, rtol=0, atol=1e-12, err_msg=f"lion step {step}")
    np.testing.assert_allclose(opt.state[param]["exp_avg"].numpy(), m, rtol=0, atol=1e-12)


# ---- Schedule-Free against its published rule ---------------------------------------------------------

A = np.array([1.0, 3.0, 0.5])  # f(y) = 0.5 * sum(a * y^2)
SF_STEPS = 6
EVAL_AFTER = 3  # eval() and back to train() in the middle of the run


def schedule_free_reference(lr, beta, wd, steps, adam=None):
    """Defazio et al. 2024, "The Road Less Scheduled", with schedulefree's details: the gradient
    (weight decay ``wd * y`` added; for AdamW after the normalization) is taken at
    y = (1-beta) z + beta x; z -= lr * g; x = (1-c) x + c z with c = w / sum(w), w = lr^2 (the
    library's weight_lr_power 2, no warm-up). AdamW (``adam=(beta2, eps)``) divides the gradient by
    sqrt(v / (1 - beta2^t)) + eps, v = beta2 v + (1-beta2) g^2, and leaves lr unscaled.
    Returns per step (y, x, z)."""
    x, z, v, weight_sum, out = P0.copy(), P0.copy(), np.zeros(3), 0.0, []
    for t in range(1, steps + 1):
        y = (1 - beta) * z + beta * x
        g = A * y
        if adam is not None:
            beta2, eps = adam
            v = beta2 * v + (1 - beta2) * g * g
            g = g / (np.sqrt(v / (1 - beta2**t)) + eps)
        g = g + wd * y
        z = z - lr * g
        weight = lr**2
        weight_sum += weight
        c = weight / weight_sum
        x = (1 - c) * x + c * z
        out.append(((1 - beta) * z + beta * x, x, z))
    return out


@pytest.mark.parametrize(
    ("name", "hp", "beta", "adam"),
    [
        ("sf_sgd", {"lr": 0.2, "momentum": 0.7, "weight_decay": 0.1}, 0.7, None),
        ("sf_adamw", {"lr": 0.05, "beta1": 0.8, "beta2": 0.9, "weight_decay": 0.1}, 0.8, (0.9, 1e-8)),
    ],
)
def test_schedule_free_matches_published_rule(name, hp, beta, adam):
    expected = schedule_free_reference(hp["lr"], beta, hp["weight_decay"], SF_STEPS, adam)
    # with a constant LR the average is uniform: c_t = 1/t, x is the mean of z_1..z_t
    np.testing.assert_allclose(expected[-1][1], np.mean([z for _, _, z in expected], axis=0), rtol=0, atol=1e-12)

    param = torch.tensor(P0, requires_grad=True)
    opt = optim.build_optimizer(name, [param], hp)  # in train mode: param holds y
    a = torch.tensor(A)
    for step, (y, x, z) in enumerate(expected, start=1):
        opt.zero_grad()
        (0.5 * (a * param * param).sum()).backward()
        opt.step()
        np.testing.assert_allclose(param.detach().numpy(), y, rtol=0, atol=1e-12, err_msg=f"{name} y, step {step}")
        np.testing.assert_allclose(opt.state[param]["z"].numpy(), z, rtol=0, atol=1e-12, err_msg=f"{name} z")
        if step in (EVAL_AFTER, SF_STEPS):
            opt.eval()  # param holds the average x
            np.testing.assert_allclose(param.detach().numpy(), x, rtol=0, atol=1e-12, err_msg=f"{name} x, step {step}")
            opt.train()
            np.testing.assert_allclose(param.detach().numpy(), y, rtol=0, atol=1e-12, err_msg=f"{name} back to y")
    assert np.abs(expected[-1][1]).sum() < np.abs(P0).sum()  # it went downhill


# ---- Prodigy is LR-free ---------------------------------------------------------------------------------


def test_prodigy_is_lr_free():
    spec = OPTIMIZERS["prodigy"]
    assert spec.lr_free
    assert "lr" not in spec.space
    assert spec.defaults["lr"] == 1.0
    opt = optim.build_optimizer("prodigy", [torch.zeros(3)], {"d_coef": 2.0})
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["d_coef"]) == (1.0, 2.0)
