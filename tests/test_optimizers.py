"""The optimizer registry: every entry trains, its search space samples, its checks reject bad values."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from optim import OPTIMIZERS, OptimizerSpec, build_optimizer, get_optimizer, resolve_hyperparameters
from optim.declared import BUILT_IN
from optim.space import OneMinusLogUniform
from sweep.train.solo import TrialConfig, run_trial

NAMES = sorted(BUILT_IN)  # the built-in registry, whatever a test declared before collection
# building one of these imports timm (about 2 s, its model registry): they run in the slow tier
TIMM_BUILT = {"muon", "lion", "nadamw", "lamb", "lars", "adan"}
BUILDS = [pytest.param(n, marks=pytest.mark.slow) if n in TIMM_BUILT else n for n in NAMES]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_registry_is_keyed_by_spec_name():
    assert NAMES
    for name, spec in OPTIMIZERS.items():
        assert isinstance(spec, OptimizerSpec)
        assert spec.name == name
        assert spec.description
        assert "lr" in spec.defaults
        assert set(spec.space) <= set(spec.defaults), f"{name}: searched keys must be hyperparameters"


@pytest.mark.parametrize("name", BUILDS)
def test_defaults_resolve_and_build(name):
    spec = OPTIMIZERS[name]
    assert resolve_hyperparameters(name, {}) == dict(spec.defaults)
    assert resolve_hyperparameters(name, dict(spec.defaults)) == dict(spec.defaults)
    param = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(name, [param], {})
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == spec.defaults["lr"]
    param.sum().backward()
    opt.step()
    assert not torch.equal(param.detach(), torch.ones(3)), f"{name}: one step did not move the parameter"


@pytest.mark.slow  # 10 epochs per optimizer: about 1-3 s each
@pytest.mark.parametrize("name", NAMES)
def test_trains_simple_cnn_on_digits_at_defaults(name, digits):
    result = run_trial(TrialConfig(optimizer=name, epochs=10, seed=0), digits)
    assert result.status == "ok", result.reason
    best = max(h.val_accuracy for h in result.history)
    assert best >= 0.90, f"{name}: best val accuracy {best:.3f} after 10 epochs"


@pytest.mark.parametrize("name", BUILDS)
def test_search_space_samples_with_optuna(name):
    spec = OPTIMIZERS[name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        sampled = {key: dist.suggest(trial, f"{name}.{key}") for key, dist in spec.space.items()}
        hp = resolve_hyperparameters(name, sampled)
        for key, dist in spec.space.items():
            assert hp[key] == sampled[key]
            if isinstance(dist, OneMinusLogUniform):
                assert f"{name}.{key}" not in trial.params
                stored = trial.params[f"{name}.one_minus_{key}"]
                assert sampled[key] == pytest.approx(1.0 - stored, abs=1e-15)
                assert dist.low - 1e-12 <= sampled[key] <= dist.high + 1e-12
            else:
                assert trial.params[f"{name}.{key}"] == sampled[key]
        build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], sampled)
        study.tell(trial, 0.0)


def test_one_minus_without_prefix():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    value = OneMinusLogUniform(0.5, 0.999).suggest(trial, "momentum")
    assert set(trial.params) == {"one_minus_momentum"}
    assert value == pytest.approx(1.0 - trial.params["one_minus_momentum"], abs=1e-15)
    assert 0.5 <= value <= 0.999


@pytest.mark.parametrize("name", NAMES)
def test_rejects_unknown_keys(name):
    with pytest.raises(KeyError) as info:
        resolve_hyperparameters(name, {"bogus": 1})
    assert "bogus" in info.value.args[0]
    if "momentum" not in OPTIMIZERS[name].defaults:
        with pytest.raises(KeyError) as info:
            resolve_hyperparameters(name, {"momentum": 0.9})
        assert "momentum" in info.value.args[0]


BAD_VALUES = [
    ("lr", 0),
    ("lr", -1),
    ("lr", 0.0),
    ("lr", "0.1"),
    ("lr", True),
    ("lr", float("nan")),
    ("weight_decay", -1e-4),
    ("momentum", 1.0),
    ("momentum", -0.1),
    ("momentum", 2),
    ("formulation", "bogus"),
    ("alpha", 1.0),
    ("beta1", 1.0),
    ("beta2", -0.5),
]


@pytest.mark.parametrize("name", NAMES)
def test_rejects_out_of_range_values(name):
    spec = OPTIMIZERS[name]
    checked = 0
    for key, value in BAD_VALUES:
        if key not in spec.defaults:
            continue
        with pytest.raises(ValueError) as info:
            resolve_hyperparameters(name, {key: value})
        assert f"optimizer.{key}" in str(info.value), str(info.value)
        checked += 1
    assert checked >= 5  # lr and weight_decay at least


def test_accepts_boundary_values():
    assert resolve_hyperparameters("momentum", {"momentum": 0.0})["momentum"] == 0.0
    assert resolve_hyperparameters("sgd", {"weight_decay": 0})["weight_decay"] == 0
    for formulation in ("pytorch", "heavy_ball", "ema"):
        assert resolve_hyperparameters("nesterov", {"formulation": formulation})["formulation"] == formulation


def test_unknown_optimizer_lists_choices():
    with pytest.raises(KeyError) as info:
        get_optimizer("bogus")
    assert "bogus" in info.value.args[0]
    for name in NAMES:
        assert name in info.value.args[0]


@pytest.mark.slow  # six 3-epoch trainings: about 2 s
def test_momentum_beats_plain_sgd(digits):
    """The classic claim: at the same small LR, momentum 0.9 learns much faster than plain SGD."""

    def mean_final_accuracy(optimizer, params):
        accuracies = []
        for seed in (0, 1, 2):
            result = run_trial(TrialConfig(optimizer=optimizer, optimizer_params=params, epochs=3, seed=seed), digits)
            assert result.status == "ok", result.reason
            accuracies.append(result.history[-1].val_accuracy)
        return sum(accuracies) / len(accuracies)

    sgd = mean_final_accuracy("sgd", {"lr": 0.01})
    momentum = mean_final_accuracy("momentum", {"lr": 0.01, "momentum": 0.9})
    print(f"\nmean val accuracy after 3 epochs (seeds 0-2): sgd {sgd:.4f}  momentum {momentum:.4f}")
    assert math.isfinite(sgd) and math.isfinite(momentum)
    assert momentum > sgd + 0.1
