"""Allowed ranges of hyperparameters as data, so bad values fail at config time, not mid-trial."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optim.errors import SpecError


@dataclass(frozen=True)
class Interval:
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.high == math.inf:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, key: str, value: Any) -> None:
        """Raise ``SpecError(key, 'must be ...')`` unless ``value`` lies in the interval."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (isinstance(value, int) or not self.integer)
        ok = ok and (value > self.low if self.low_open else value >= self.low)
        ok = ok and (value < self.high if self.high_open else value <= self.high)
        if not ok:
            raise SpecError(key, f"must be {self.describe()}, got {value!r}")


POSITIVE = Interval(low_open=True)
NON_NEGATIVE = Interval()
NON_POSITIVE = Interval(-math.inf, 0.0, high_open=False)
UNIT = Interval(0.0, 1.0)  # [0, 1): momentum-like averaging factors
OPEN_UNIT = Interval(0.0, 1.0, low_open=True)  # (0, 1)
NON_NEGATIVE_INT = Interval(integer=True)
POSITIVE_INT = Interval(1, integer=True)
