"""Search-space primitives as data, so registries can declare their spaces without code.

Each distribution knows how to ask an Optuna trial for a value under a given name. Names are
prefixed by the caller (e.g. ``cosine.min_lr_factor``) so conditional parameters of different
choices never collide in one study.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LogUniform:
    """Scale parameters such as the learning rate: uniform in log space."""

    low: float
    high: float

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high)


@dataclass(frozen=True)
class Choice:
    values: Sequence[Any]

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))


@dataclass(frozen=True)
class OneMinusLogUniform:
    """Momentum-like parameters near 1: sample ``1 - value`` log-uniformly.

    0.9, 0.99 and 0.999 are equally far apart this way, which is how the literature treats
    momentum (the averaging horizon 1/(1-mu) is what matters). The Optuna parameter is stored as
    ``one_minus_<name>``; the returned value is the momentum itself.
    """

    low: float
    high: float

    def suggest(self, trial: Any, name: str) -> float:
        stem, _, leaf = name.rpartition(".")
        stored = f"{stem}.one_minus_{leaf}" if stem else f"one_minus_{leaf}"
        return 1.0 - trial.suggest_float(stored, 1.0 - self.high, 1.0 - self.low, log=True)


Distribution = LogUniform | Uniform | IntRange | Choice | OneMinusLogUniform
