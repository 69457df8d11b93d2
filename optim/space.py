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


@dataclass(frozen=True)
class Conditional:
    """``inner``, searched only while hyperparameter ``on`` has one of ``values`` (its sampled,
    fixed or default value), e.g. a Nesterov switch's own damping. ``on`` comes earlier in the space."""

    inner: LogUniform | Uniform | IntRange | Choice | OneMinusLogUniform
    on: str
    values: tuple[Any, ...]

    def applies(self, chosen: dict[str, Any]) -> bool:
        return chosen.get(self.on) in self.values

    def suggest(self, trial: Any, name: str) -> Any:
        return self.inner.suggest(trial, name)


Distribution = LogUniform | Uniform | IntRange | Choice | OneMinusLogUniform | Conditional

# The vocabulary of a space written as data (a user's optimizer file, a saved sweep): one key per
# distribution, its bounds or values as a list, ``when: {name: value or [values]}`` for a condition.
VOCABULARY = {
    "log_uniform": LogUniform,
    "uniform": Uniform,
    "int": IntRange,
    "one_minus_log_uniform": OneMinusLogUniform,
    "choice": Choice,
}


def to_data(dist: Distribution) -> dict[str, Any]:
    """``dist`` in the vocabulary (what ``from_data`` reads back)."""
    if isinstance(dist, Conditional):
        values = list(dist.values)
        return {**to_data(dist.inner), "when": {dist.on: values[0] if len(values) == 1 else values}}
    word = next(w for w, kind in VOCABULARY.items() if type(dist) is kind)
    return {word: list(dist.values) if isinstance(dist, Choice) else [dist.low, dist.high]}


def from_data(key: str, data: Any) -> Distribution:
    """One distribution from the vocabulary; raises ``SpecError(key, what is allowed)``."""
    from optim.errors import SpecError

    words = ", ".join(VOCABULARY)
    if not isinstance(data, dict):
        raise SpecError(key, f"must be a mapping like {{log_uniform: [1.0e-4, 0.1]}} ({words}), got {data!r}")
    data = dict(data)
    when = data.pop("when", None)
    if len(data) != 1 or next(iter(data)) not in VOCABULARY:
        raise SpecError(key, f"must name one of {words} (and optionally when:), got {', '.join(map(str, data))}")
    word, bounds = next(iter(data.items()))
    inner = _distribution(key, word, bounds)
    if when is None:
        return inner
    if not isinstance(when, dict) or len(when) != 1:
        raise SpecError(
            f"{key}.when", f"must be one hyperparameter and its value(s), e.g. {{nesterov: true}}, got {when!r}"
        )
    on, values = next(iter(when.items()))
    return Conditional(inner, str(on), tuple(values) if isinstance(values, list) else (values,))


def _distribution(key: str, word: str, bounds: Any) -> Distribution:
    from optim.errors import SpecError

    if word == "choice":
        if not isinstance(bounds, list) or not bounds:
            raise SpecError(key, f"choice must list its values, got {bounds!r}")
        return Choice(tuple(bounds))
    numbers = isinstance(bounds, list) and len(bounds) == 2
    numbers = numbers and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
    if word == "int":
        numbers = numbers and all(isinstance(b, int) for b in bounds)
    if not numbers or not bounds[0] < bounds[1]:
        raise SpecError(key, f"{word} needs [low, high] with low < high, got {bounds!r}")
    low, high = bounds
    if word == "log_uniform" and low <= 0:
        raise SpecError(key, f"log_uniform needs 0 < low, got {bounds!r}")
    if word == "one_minus_log_uniform" and not 0 <= low < high < 1:
        raise SpecError(key, f"one_minus_log_uniform needs 0 <= low < high < 1, got {bounds!r}")
    return VOCABULARY[word](low, high) if word == "int" else VOCABULARY[word](float(low), float(high))
