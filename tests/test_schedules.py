"""The LR-schedule registry, driven as a trial drives it, against closed forms written here.

Each closed form is ``f(epoch, batch, params, E, S, base_lr) -> lr`` for the LR used at that batch,
written from the schedule's definition, independently of torch.optim.lr_scheduler.
"""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from optim import SCHEDULES, ScheduleDriver, ScheduleSpec, get_schedule, resolve_schedule_params

NAMES = sorted(SCHEDULES)
E, S = 10, 7

# Validation losses fed to after_epoch: improves, stalls, improves, stalls (same for every schedule).
VAL_LOSSES = [0.6, 0.8, 0.7, 0.55, 0.55, 0.58, 0.5, 0.5, 0.5, 0.49]
# LR multiplier per epoch for VAL_LOSSES, worked out by hand (torch: reduce when the number of
# epochs without a relative improvement of 1e-4 exceeds patience, then reset that count).
#  factor 0.3, patience 1: bad after e1,e2 -> cut for e3; e3 best; bad e4,e5 -> cut for e6;
#                          e6 best; bad e7,e8 -> cut for e9.
#  factor 0.5, patience 0: every non-improving epoch (1, 2, 4, 5, 7, 8) cuts the next epoch's LR.
PLATEAU_MULTIPLIERS = {
    (0.3, 1): [1, 1, 1, 0.3, 0.3, 0.3, 0.09, 0.09, 0.09, 0.027],
    (0.5, 0): [1, 1, 0.5, 0.25, 0.25, 0.125, 0.0625, 0.0625, 0.03125, 0.015625],
}


def _constant(e, b, p, n_epochs, n_steps, lr):
    return lr


def _step(e, b, p, n_epochs, n_steps, lr):
    return lr * p["gamma"] ** (e // p["step_epochs"])


def _multistep(e, b, p, n_epochs, n_steps, lr):
    milestones = sorted({max(1, round(f * n_epochs)) for f in p["milestones"]})
    return lr * p["gamma"] ** sum(1 for m in milestones if m <= e)


def _exponential(e, b, p, n_epochs, n_steps, lr):
    return lr * p["gamma"] ** e


def _cosine(e, b, p, n_epochs, n_steps, lr):
    eta_min = lr * p["min_lr_factor"]
    if p["restart_epochs"]:
        period, t = p["restart_epochs"], e
        while t >= period:
            t -= period
            period *= p["restart_mult"]
    else:
        period, t = n_epochs, e
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / period)) / 2


def _onecycle(e, b, p, n_epochs, n_steps, lr):
    total = n_epochs * n_steps
    t = e * n_steps + b
    initial = lr / p["div_factor"]
    minimum = initial / p["final_div_factor"]
    peak_step = p["pct_start"] * total - 1

    def cos_anneal(start, end, frac):
        return start + (end - start) * (1 - math.cos(math.pi * frac)) / 2

    if t <= peak_step:
        return cos_anneal(initial, lr, t / peak_step)
    return cos_anneal(lr, minimum, (t - peak_step) / (total - 1 - peak_step))


def _polynomial(e, b, p, n_epochs, n_steps, lr):
    return lr * (1 - min(e, n_epochs) / n_epochs) ** p["power"]


def _plateau(e, b, p, n_epochs, n_steps, lr):
    return lr * PLATEAU_MULTIPLIERS[(p["factor"], p["patience"])][e]


CLOSED_FORMS = {
    "constant": _constant,
    "step": _step,
    "multistep": _multistep,
    "exponential": _exponential,
    "cosine": _cosine,
    "onecycle": _onecycle,
    "polynomial": _polynomial,
    "plateau": _plateau,
}

# One non-default parameter set per schedule (cosine also gets warm restarts).
CUSTOM = {
    "constant": {},
    "step": {"step_epochs": 2, "gamma": 0.5},
    "multistep": {"milestones": [0.3, 0.6, 0.9], "gamma": 0.5},
    "exponential": {"gamma": 0.9},
    "cosine": {"min_lr_factor": 0.1},
    "onecycle": {"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0},
    "polynomial": {"power": 2.0},
    "plateau": {"factor": 0.5, "patience": 0},
}
EXTRA_CASES = [
    ("cosine", {"restart_epochs": 3, "min_lr_factor": 0.05}),
    ("cosine", {"restart_epochs": 4}),
]


def drive(name, params, epochs=E, steps=S, base_lr=0.1):
    """Run the driver as the trial does; return the LR in effect at every (epoch, batch)."""
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=base_lr)
    driver = ScheduleDriver(opt, name, params, epochs=epochs, steps_per_epoch=steps)
    lrs = []
    for e in range(epochs):
        row = []
        for _ in range(steps):
            row.append(driver.lr)
            opt.step()  # no gradient: a no-op, but keeps torch's step-order check quiet
            driver.after_batch()
        lrs.append(row)
        driver.after_epoch(VAL_LOSSES[e] if e < len(VAL_LOSSES) else VAL_LOSSES[-1])
    return lrs


def assert_matches(got, expected_fn, label):
    for e, row in enumerate(got):
        for b, lr in enumerate(row):
            expected = expected_fn(e, b)
            assert math.isclose(lr, expected, rel_tol=1e-9, abs_tol=1e-15), (
                f"{label}: epoch {e} batch {b}: lr {lr!r}, expected {expected!r}"
            )


def test_registry_is_keyed_by_spec_name():
    for name, spec in SCHEDULES.items():
        assert isinstance(spec, ScheduleSpec)
        assert spec.name == name
        assert spec.granularity in ("epoch", "batch", "plateau")
        assert spec.description
        assert set(spec.space) <= set(spec.defaults)


def test_every_schedule_has_a_closed_form():
    assert set(SCHEDULES) <= set(CLOSED_FORMS), f"no closed form for {set(SCHEDULES) - set(CLOSED_FORMS)}"
    assert set(SCHEDULES) <= set(CUSTOM)


@pytest.mark.parametrize("which", ["default", "custom"])
@pytest.mark.parametrize("name", NAMES)
def test_schedule_matches_closed_form(name, which):
    closed_form = CLOSED_FORMS[name]
    given = {} if which == "default" else CUSTOM[name]
    base_lr = 0.1 if which == "default" else 0.05
    params = {**SCHEDULES[name].defaults, **given}
    got = drive(name, given, base_lr=base_lr)
    assert_matches(got, lambda e, b: closed_form(e, b, params, E, S, base_lr), f"{name} {given}")
    if name != "constant":
        assert got[-1][-1] < base_lr, f"{name}: the LR never moved"


@pytest.mark.parametrize("name,given", EXTRA_CASES, ids=[str(p) for _, p in EXTRA_CASES])
def test_extra_cases_match_closed_form(name, given):
    params = {**SCHEDULES[name].defaults, **given}
    got = drive(name, given)
    assert_matches(got, lambda e, b: CLOSED_FORMS[name](e, b, params, E, S, 0.1), f"{name} {given}")
    # a warm restart really restarts
    assert got[params["restart_epochs"]][0] == pytest.approx(0.1, rel=1e-12)


def test_epoch_schedules_change_lr_after_the_first_epoch():
    """Regression: without warm-up, the first after_epoch was skipped (every schedule lagged one epoch)."""
    got = drive("exponential", {"gamma": 0.5}, epochs=3, steps=2)
    assert [row[0] for row in got] == pytest.approx([0.1, 0.05, 0.025], rel=1e-12)


WARMUP_NAMES = [n for n in NAMES if n != "plateau"]  # plateau's LR depends on the losses it sees


@pytest.mark.parametrize("name", WARMUP_NAMES)
def test_warmup_in_front_of_schedule(name):
    warmup_epochs, start_factor, base_lr = 2, 0.1, 0.1
    given = {**CUSTOM[name], "warmup_epochs": warmup_epochs, "warmup_start_factor": start_factor}
    params = {**SCHEDULES[name].defaults, **given}
    ramp = warmup_epochs * S

    def expected(e, b):
        t = e * S + b
        if t < ramp:
            return base_lr * (start_factor + (1 - start_factor) * t / ramp)
        return CLOSED_FORMS[name](e - warmup_epochs, b, params, E - warmup_epochs, S, base_lr)

    got = drive(name, given, base_lr=base_lr)
    assert_matches(got, expected, f"warm-up + {name}")
    assert got[0][0] == pytest.approx(base_lr * start_factor)


@pytest.mark.parametrize("name", NAMES)
def test_warmup_longer_than_run(name):
    """warmup_epochs >= epochs: the whole run is warm-up and nothing fails (one-cycle used to raise)."""
    given = {"warmup_epochs": 5, "warmup_start_factor": 0.2}
    got = drive(name, given, epochs=3, steps=4, base_lr=1.0)
    ramp = 3 * 4
    assert_matches(got, lambda e, b: 0.2 + 0.8 * (e * 4 + b) / ramp, f"all warm-up {name}")


@pytest.mark.parametrize("name", NAMES)
def test_search_space_samples_and_resolves(name):
    spec = SCHEDULES[name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for _ in range(3):
        trial = study.ask()
        sampled = {key: dist.suggest(trial, f"{name}.{key}") for key, dist in spec.space.items()}
        params = resolve_schedule_params(name, sampled)
        for key, value in sampled.items():
            assert params[key] == value
        drive(name, sampled, epochs=3, steps=2)  # builds and runs
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_resolve_defaults_and_unknown_keys(name):
    params = resolve_schedule_params(name, {})
    assert params == {"warmup_epochs": 0, "warmup_start_factor": 0.1, **SCHEDULES[name].defaults}
    with pytest.raises(KeyError) as info:
        resolve_schedule_params(name, {"bogus": 1})
    assert "schedule.bogus" in info.value.args[0]
    # a key another schedule takes, with a value valid there, is still unknown here
    foreign = {
        key: value
        for other in NAMES
        for key, value in SCHEDULES[other].defaults.items()
        if key not in SCHEDULES[name].defaults
    }
    key, value = sorted(foreign.items())[0]
    with pytest.raises(KeyError) as info:
        resolve_schedule_params(name, {key: value})
    assert f"schedule.{key}" in info.value.args[0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "key,value",
    [
        ("warmup_epochs", -1),
        ("warmup_epochs", 1.5),
        ("warmup_epochs", True),
        ("warmup_epochs", "2"),
        ("warmup_start_factor", -0.1),
    ],
)
def test_resolve_rejects_bad_warmup(name, key, value):
    with pytest.raises(ValueError) as info:
        resolve_schedule_params(name, {key: value})
    assert f"schedule.{key}" in str(info.value)


@pytest.mark.parametrize("value", [[0.0, 0.5], [0.5, 1.0], [1.5], [-0.2], [], "0.5", 0.5, [0.5, "x"]])
def test_resolve_rejects_bad_milestones(value):
    with pytest.raises(ValueError) as info:
        resolve_schedule_params("multistep", {"milestones": value})
    assert "schedule.milestones" in str(info.value)


def test_resolve_rejects_bad_numbers():
    for name, key, value in [
        ("step", "gamma", -0.5),
        ("step", "step_epochs", -1),
        ("step", "step_epochs", 2.5),
        ("plateau", "patience", -1),
        ("exponential", "gamma", "0.9"),
        ("cosine", "restart_epochs", True),
    ]:
        with pytest.raises(ValueError) as info:
            resolve_schedule_params(name, {key: value})
        assert f"schedule.{key}" in str(info.value)
    assert resolve_schedule_params("multistep", {"milestones": [0.25]})["milestones"] == [0.25]


def test_unknown_schedule_lists_choices():
    with pytest.raises(KeyError) as info:
        get_schedule("bogus")
    for name in NAMES:
        assert name in info.value.args[0]
