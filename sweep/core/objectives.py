"""What a sweep's studies optimize, declared once: each objective's name (the config's
``objectives=[...]``), its Optuna direction, the final metric its value is read from, and the
value a trial that diverged gets.

The first objective is always validation accuracy: the ranking, the re-evaluation and the pruner
stay on it. A second one (training seconds) makes each optimizer's study multi-objective, and the
report shows its Pareto set. Nothing here imports Optuna: directions are Optuna's names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Objective", "OBJECTIVES", "VAL_ACCURACY", "TRAIN_SECONDS", "DEFAULT", "directions", "values_of"]

MAXIMIZE, MINIMIZE = "maximize", "minimize"


@dataclass(frozen=True)
class Objective:
    """One objective: ``metric`` is the trial's final metric (``steps.final_metrics``) it reads."""

    name: str
    direction: str  # MAXIMIZE or MINIMIZE, as Optuna names them
    metric: str
    label: str  # for tables and axes
    worst: float  # a diverged trial's value: never better than a trial that trained
    digits: int  # decimals in tables

    def of(self, metrics: Mapping[str, float]) -> float:
        """The trial's value from its final metrics; the worst one when it has none."""
        value = metrics.get(self.metric)
        return float(value) if value is not None and math.isfinite(value) else self.worst


VAL_ACCURACY = Objective("val_accuracy", MAXIMIZE, "val_accuracy", "val accuracy", 0.0, 4)
# Larger than any real trial's training time (30 years), so a diverged trial never joins the
# Pareto set by having stopped early; finite, as Optuna's samplers and storages expect.
TRAIN_SECONDS = Objective("train_seconds", MINIMIZE, "train_seconds", "train s", 1e9, 2)
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (VAL_ACCURACY, TRAIN_SECONDS)}
DEFAULT = (VAL_ACCURACY.name,)


def directions(names: Sequence[str]) -> list[str]:
    return [OBJECTIVES[n].direction for n in names]


def values_of(names: Sequence[str], accuracy: float, metrics: Mapping[str, float], diverged: bool) -> list[float]:
    """What a multi-objective study is told for a COMPLETE trial: ``accuracy`` (the value a
    single-objective study is told) first, then the others from the final metrics. A diverged
    trial gets every objective's worst value: it is no result, and its time stopped early."""
    if diverged:
        return [OBJECTIVES[n].worst for n in names]
    return [accuracy, *(OBJECTIVES[n].of(metrics) for n in names[1:])]
