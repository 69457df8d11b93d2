"""Turn an Optuna trial into a TrialConfig: sample the optimizer's and schedule's spaces.

Spaces come from the registries as data. Values fixed in the config (``optimizer.momentum=0.9``,
``schedule.warmup_epochs=1``) are not searched. With ``search_effective_lr`` the sampler picks
the effective step lr/(1 - momentum) and lr is derived from it. With ``batch_sizes`` each trial
also picks its batch size (Optuna parameter ``batch_size``). With ``search=false`` (a benchmark's
self-tuning ruleset) nothing is drawn: each trial trains at the optimizer's defaults and the first
usable schedule's, with the fixed values on top.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from optim import OPTIMIZERS, SCHEDULES, usable_schedules
from optim.space import Choice, Conditional
from sweep.core.config import SweepConfig, TrialConfig, accepted_keys


def sample_trial(trial, optimizer: str, cfg: SweepConfig) -> TrialConfig:
    spec = OPTIMIZERS[optimizer]
    fixed = {k: v for k, v in cfg.optimizer.fixed.items() if k in spec.defaults}
    effective = cfg.search and cfg.search_effective_lr and spec.has_momentum and "lr" not in fixed
    hp: dict[str, Any] = {}
    for key, dist in spec.space.items() if cfg.search else ():  # no search: the spec's defaults
        if key in fixed or (key == "lr" and effective):
            continue
        if isinstance(dist, Conditional) and not dist.applies({**spec.defaults, **hp, **fixed}):
            continue  # e.g. a damping searched only with nesterov on: absent from this trial's params
        hp[key] = dist.suggest(trial, key)
    if effective:  # EMA momentum's lr already is the effective step; the others' is lr / (1 - mu)
        momentum = fixed.get("momentum", hp.get("momentum", spec.defaults["momentum"]))
        step = spec.space["lr"].suggest(trial, "effective_lr")
        ema = fixed.get("formulation", spec.defaults.get("formulation")) == "ema"
        hp["lr"] = step if ema else step * (1.0 - momentum)
    hp.update(fixed)

    schedules = usable_schedules(optimizer, cfg.schedules)
    searched = len(schedules) > 1 and cfg.search
    schedule = Choice(schedules).suggest(trial, "schedule") if searched else schedules[0]
    sched_fixed = {k: v for k, v in cfg.schedule.fixed.items() if k in accepted_keys("schedule", schedule)}
    sched_params = {
        key: dist.suggest(trial, f"{schedule}.{key}")
        for key, dist in (SCHEDULES[schedule].space.items() if cfg.search else ())
        if key not in sched_fixed
    }
    sched_params.update(sched_fixed)

    tc = cfg.trial_config(optimizer, hp, schedule, sched_params)
    if cfg.batch_sizes:
        tc = dataclasses.replace(tc, batch_size=Choice(cfg.batch_sizes).suggest(trial, "batch_size"))
    return tc


def run_params(tc: TrialConfig, trial_params: dict[str, Any]) -> dict[str, Any]:
    """Everything that defines a trial, for MLflow: fixed settings, resolved values, sampled values."""
    from optim import resolve_hyperparameters, resolve_schedule_params

    params = {
        "optimizer": tc.optimizer,
        "model": tc.model,
        "dataset": tc.dataset,
        "epochs": tc.epochs,
        "batch_size": tc.batch_size,
        "seed": tc.seed,
        "l1": tc.l1,
        "schedule": tc.schedule,
    }
    if tc.train_subset is not None:
        params["train_subset"] = tc.train_subset
    if tc.eval_every_steps:
        params["eval_every_steps"] = tc.eval_every_steps
    if tc.target_accuracy is not None:
        params["target_accuracy"] = tc.target_accuracy
    params.update(resolve_hyperparameters(tc.optimizer, tc.optimizer_params))
    params.update(
        {f"{tc.schedule}.{k}": v for k, v in resolve_schedule_params(tc.schedule, tc.schedule_params).items()}
    )
    params.update(trial_params)
    return params


def chosen_hyperparameters(tc: TrialConfig, cfg: SweepConfig | None = None) -> dict[str, Any]:
    """What a trial was given, in the optimizer's own terms (``momentum``, not ``one_minus_momentum``),
    and its batch size when the sweep ``cfg`` searches it."""
    searched = {"batch_size": tc.batch_size} if cfg is not None and cfg.batch_sizes else {}
    return {
        **tc.optimizer_params,
        "schedule": tc.schedule,
        **{f"{tc.schedule}.{k}": v for k, v in tc.schedule_params.items()},
        **searched,
    }
