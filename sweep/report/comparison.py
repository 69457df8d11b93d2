"""What a sweep's report shows, as typed values: built from the stores by ``sweep.report.collect``, drawn
by ``sweep.report.plots``, written by ``sweep.report.files``. Nothing here reads a store or draws.

The search finds each optimizer's best configuration on the validation set; the re-evaluation
trains that configuration again with fresh seeds and scores it on the test set. The ranking is by
the mean of those test accuracies, never by the single lucky search trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sweep.core.outcome import Status

# Parameter importances from fewer finished trials are not computed: fANOVA's forest fitted to
# 1-3 points ranks noise, and a bar chart of it reads as a finding.
MIN_IMPORTANCE_TRIALS = 4


@dataclass(frozen=True)
class SeedStats:
    """Test accuracy of one configuration over re-evaluation seeds."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); 0.0 when n == 1
    ci_low: float  # 95 % confidence interval of the mean (Student's t); equal to mean when n == 1
    ci_high: float

    @property
    def spread_measured(self) -> bool:
        """Whether the seeds measured any spread: one seed, or seeds that all scored the same, give
        a zero-width interval that must not read as certainty."""
        return self.n >= 2 and self.std > 0.0


@dataclass(frozen=True)
class BudgetCurve:
    """How an optimizer's best validation accuracy grows with the tuning budget."""

    expected_best: tuple[float, ...]  # index k-1: expected best after k trials, k = 1..n
    low: tuple[float, ...]  # 5th percentile over random trial orders, per k
    high: tuple[float, ...]  # 95th percentile, per k
    share_within_2pct: float | None  # share of the trials within 2 % (relative) of the best; None: no scored trial
    trials_to_1pct: int | None  # trials run (in the sweep's order) until one was within 1 % of the best


@dataclass(frozen=True)
class SearchedTrial:
    """One finished trial of the search (interrupted ones left out)."""

    number: int
    status: Status
    value: float | None  # final validation accuracy if scored (status ok), else None
    last_val_accuracy: float | None  # the last validation accuracy it reported (pruned ones too)
    lr: float | None
    schedule: str
    batch_size: int
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)  # as the optimizer took them
    val_curve: tuple[float, ...] = ()  # validation accuracy per epoch, from epoch 1


@dataclass(frozen=True)
class SeedRun:
    """One re-evaluation: a configuration of the search trained again with another seed."""

    source_trial: int  # the search trial whose configuration it re-runs
    seed: int
    status: Status
    val_accuracy: float | None
    test_accuracy: float | None
    val_curve: tuple[float, ...] = ()  # validation accuracy per epoch, from epoch 1
    run_id: str | None = None


@dataclass(frozen=True)
class OptimizerResult:
    optimizer: str
    counts: Mapping[str, int]  # search trials per status value
    best_trial: int | None  # the configuration re-evaluated and reported
    best_val_accuracy: float | None  # of that trial in the search
    best_hyperparameters: Mapping[str, Any]
    trials: tuple[SearchedTrial, ...]  # the search, in trial order
    reevals: tuple[SeedRun, ...]  # re-evaluations of best_trial (finished ok)
    test: SeedStats | None  # over ``reevals``; None until one finished
    tied: bool | None  # not distinguishable from the top-ranked optimizer (True for it); None: not tested
    p_value: float | None  # of the tie test against the top-ranked optimizer
    budget: BudgetCurve | None
    importances: Mapping[str, float]  # Optuna's importances by the table's names ({} under MIN_IMPORTANCE_TRIALS)
    lr_per_step: tuple[float, ...]  # the best configuration's learning rate at every step
    steps_per_epoch: int
    train_seconds: float  # search and re-evaluation together
    best_run_id: str | None = None  # MLflow run of the best search trial
    best_optuna_params: Mapping[str, Any] = field(default_factory=dict)  # as Optuna searched them (one_minus_beta1)
    model_uri: str | None = None  # the logged best re-evaluated model (runs:/.../model)
    importance_trials: int = 0  # finished (complete) search trials: what the importances were fitted to


@dataclass(frozen=True)
class ParetoTrial:
    """A finished trial of a multi-objective search, by the values its study was told."""

    number: int
    values: Mapping[str, float]  # objective name (``core.objectives``) -> value
    hyperparameters: Mapping[str, Any]  # as the optimizer took them
    ok: bool  # finished ok (a diverged one was told every objective's worst value)
    pareto: bool  # in the study's Pareto set (Optuna's ``best_trials``)


@dataclass(frozen=True)
class ParetoFront:
    """One optimizer's multi-objective search: its Pareto set among its finished trials."""

    optimizer: str
    objectives: tuple[str, ...]
    trials: tuple[ParetoTrial, ...]  # the trials finished ok and the Pareto set, in trial order

    @property
    def best(self) -> tuple[ParetoTrial, ...]:
        return tuple(t for t in self.trials if t.pareto)


@dataclass(frozen=True)
class Comparison:
    """Everything the report shows, optimizers in ranking order (best mean test accuracy first;
    those without re-evaluation after, by best validation accuracy)."""

    name: str
    dataset: str
    model: str
    epochs: int
    trials: int  # search budget per optimizer
    reeval_seeds: int
    state: str  # finished / running / interrupted
    generated: str  # ISO time the report was built
    tie_rule: str  # one line: which test marks ties
    results: tuple[OptimizerResult, ...]
    batch_sizes: tuple[int, ...] = ()  # searched batch sizes; () when fixed
    settings: Mapping[str, Any] = field(default_factory=dict)  # the sweep's config, for the page's header
    pareto: tuple[ParetoFront, ...] = ()  # per optimizer, with objectives=[val_accuracy,train_seconds] only
