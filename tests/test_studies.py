"""The sampler and pruner registries, with real Optuna studies (in memory, no Ray): every entry
samples the product's real search space reproducibly, and every pruner stops a hopeless trial."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from optim import OPTIMIZERS, SCHEDULES, resolve_hyperparameters, resolve_schedule_params
from sweep.core.config import load_config
from sweep.execution.search import chosen_hyperparameters, sample_trial
from sweep.stores.studies import PRUNERS, SAMPLERS, make_pruner, make_sampler

EPOCHS = 6


def _sample(sampler_name: str, optimizer: str, n: int = 8) -> list[dict]:
    """Ask ``n`` trials of the quick-start space from a seeded study; tell a value so models fit."""
    cfg = load_config("quickstart", ["schedules=[constant,cosine,step,onecycle]"], mode="sweep")
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler_name, seed=0, trials=n))
    chosen = []
    for _ in range(n):
        trial = study.ask()
        tc = sample_trial(trial, optimizer, cfg)
        chosen.append(chosen_hyperparameters(tc))
        study.tell(trial, -abs(math.log10(tc.optimizer_params["lr"]) + 2))  # best near lr = 1e-2
    return chosen


@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
@pytest.mark.parametrize("optimizer", ["momentum", "adamw"])
def test_sampler_draws_valid_reproducible_configs(sampler_name, optimizer):
    first = _sample(sampler_name, optimizer)
    assert first == _sample(sampler_name, optimizer)  # same seed, same trials: a fair comparison
    assert len({tuple(sorted(c.items())) for c in first}) == len(first)  # it does search
    space = OPTIMIZERS[optimizer].space
    for chosen in first:
        schedule = chosen["schedule"]
        assert schedule in SCHEDULES
        hp = {k: v for k, v in chosen.items() if k in space}
        assert set(hp) == set(space)
        resolve_hyperparameters(optimizer, hp)  # within the optimizer's allowed ranges
        resolve_schedule_params(
            schedule, {k.partition(".")[2]: v for k, v in chosen.items() if k.startswith(f"{schedule}.")}
        )
        for key, dist in space.items():
            assert dist.low - 1e-12 <= hp[key] <= dist.high + 1e-12, (key, hp[key])


def test_sampler_seed_changes_the_draws():
    cfg = load_config("quickstart", [], mode="sweep")

    def draws(seed):
        study = optuna.create_study(sampler=make_sampler("tpe", seed=seed, trials=6))
        return [sample_trial(study.ask(), "sgd", cfg).optimizer_params["lr"] for _ in range(3)]

    assert draws(0) == draws(0) and draws(0) != draws(1)


@pytest.mark.parametrize("pruner_name", sorted(PRUNERS))
def test_pruner_stops_a_hopeless_trial(pruner_name):
    """Eight trials learn well; then three stay at 10 % accuracy. A real pruner stops each early."""
    pruner = make_pruner(pruner_name, EPOCHS)
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(8):
        trial = study.ask()
        for epoch in range(EPOCHS):
            trial.report(0.8 + 0.02 * epoch + 0.001 * i, epoch)
            assert not trial.should_prune()  # the worker asks after every epoch
        study.tell(trial, 0.9 + 0.001 * i)
    stopped_at = []
    for _ in range(3):
        trial = study.ask()
        epoch = None
        for epoch in range(EPOCHS):
            trial.report(0.1, epoch)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                stopped_at.append(epoch)
                break
        else:
            study.tell(trial, 0.1)
    if isinstance(pruner, optuna.pruners.NopPruner):
        assert stopped_at == []
    else:
        assert len(stopped_at) == 3 and max(stopped_at) < EPOCHS - 1, stopped_at


@pytest.mark.parametrize("formulation", ["pytorch", "heavy_ball", "ema"])
def test_search_effective_lr(formulation):
    """Searching lr/(1 - mu) for momentum methods; EMA momentum's lr already is that step."""
    cfg = load_config("quickstart", ["search_effective_lr=true", f"optimizer.formulation={formulation}"], mode="sweep")
    study = optuna.create_study(sampler=make_sampler("random", seed=0, trials=4))
    for optimizer in ("momentum", "nesterov"):
        trial = study.ask()
        hp = sample_trial(trial, optimizer, cfg).optimizer_params
        assert "lr" not in trial.params and "effective_lr" in trial.params
        momentum = 1 - trial.params["one_minus_momentum"]
        assert hp["momentum"] == pytest.approx(momentum) and hp["formulation"] == formulation
        scale = 1.0 if formulation == "ema" else 1 - momentum
        assert hp["lr"] == pytest.approx(trial.params["effective_lr"] * scale)
    trial = study.ask()
    sample_trial(trial, "adam", cfg)
    assert "lr" in trial.params and "effective_lr" not in trial.params  # no momentum: lr as usual


def test_classic_config_fixes_everything():
    """conf/classic.yaml is one run per optimizer: every value fixed, so a trial asks Optuna for
    nothing (a FixedTrial with no parameters raises on any suggestion)."""
    cfg = load_config("classic", mode="sweep")
    assert (cfg.dataset, cfg.model, cfg.epochs, cfg.batch_size, cfg.val_fraction) == (
        "fashion_mnist",
        "simple_cnn",
        10,
        64,
        0.2,
    )
    assert cfg.optimizers == ("sgd", "momentum") and cfg.trials == 1 and cfg.pruner == "none"
    for optimizer in cfg.optimizers:
        tc = sample_trial(optuna.trial.FixedTrial({}), optimizer, cfg)
        assert tc.optimizer_params["lr"] == 0.01 and tc.schedule == "constant" and tc.batch_size == 64
    assert resolve_hyperparameters("momentum", tc.optimizer_params)["momentum"] == 0.9
