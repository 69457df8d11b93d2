"""Optuna samplers and pruners by config name, as data; Optuna is imported only when one is built.

Every optimizer's study gets the same sampler with the same seed: a fair comparison. TPE's
constant liar keeps parallel workers from all sampling the same point while their trials run.
Each epoch is one step of the pruner's resource (steps count from 1; ``epochs`` is the most a
trial gets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler


def _tpe(seed: int, trials: int) -> BaseSampler:
    from optuna.samplers import TPESampler

    return TPESampler(seed=seed, constant_liar=True, n_startup_trials=max(2, min(10, trials // 3)))


def _random(seed: int, trials: int) -> BaseSampler:
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _qmc(seed: int, trials: int) -> BaseSampler:
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.samplers import QMCSampler

    with warnings.catch_warnings():  # experimental since Optuna 3.0, and the external ruleset's sampler
        warnings.simplefilter("ignore", ExperimentalWarning)
        # scrambled: without it every seed draws the same Sobol points, and studies that should be
        # independent (a benchmark's, seeds seed + k) would search the very same configurations
        return QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)


def _cmaes(seed: int, trials: int) -> BaseSampler:
    from optuna.samplers import CmaEsSampler

    return CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _gp(seed: int, trials: int) -> BaseSampler:
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed)


SAMPLERS: dict[str, Callable[[int, int], BaseSampler]] = {
    "tpe": _tpe,
    "random": _random,
    "qmc": _qmc,
    "cmaes": _cmaes,
    "gp": _gp,
}


def _median(epochs: int) -> BasePruner:
    from optuna.pruners import MedianPruner

    return MedianPruner(n_startup_trials=2, n_warmup_steps=2)  # never before the second epoch


def _asha(epochs: int) -> BasePruner:
    from optuna.pruners import SuccessiveHalvingPruner

    return SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


def _hyperband(epochs: int) -> BasePruner:
    from optuna.pruners import HyperbandPruner

    return HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)


def _none(epochs: int) -> BasePruner:
    from optuna.pruners import NopPruner

    return NopPruner()


PRUNERS: dict[str, Callable[[int], BasePruner]] = {
    "median": _median,
    "asha": _asha,
    "hyperband": _hyperband,
    "none": _none,
}
SAMPLER_NAMES, PRUNER_NAMES = tuple(SAMPLERS), tuple(PRUNERS)
# The samplers that search a multi-objective study (``objectives=[val_accuracy,train_seconds]``);
# Optuna's CmaEsSampler refuses one.
MULTI_OBJECTIVE_SAMPLERS = ("gp", "qmc", "random", "tpe")
NO_PRUNER = "none"  # the only pruner of a multi-objective study: Optuna prunes single-objective trials only
