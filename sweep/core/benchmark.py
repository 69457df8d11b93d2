"""A benchmark's configuration: several workloads, one tuning ruleset, and the sweeps it runs.

A benchmark asks AlgoPerf's question (Dahl et al. 2023) of the registry's optimizers: which one
reaches a target validation accuracy soonest, across several workloads, under a declared tuning
ruleset. It is written as a config file with a ``benchmark:`` section beside the ordinary keys,
which every workload shares (``optimizers``, ``schedules``, ``trials``, ``workers`` ...)::

    benchmark:
      ruleset: external        # tuned | external | self
      studies: 2               # independent studies per workload and optimizer
      r_max: 4                 # the performance profile's largest ratio
      workloads:
        digits_cnn: {dataset: digits, model: simple_cnn, epochs: 3, batch_size: 64, target: relative:0.99}

Each workload becomes one ordinary sweep per study (``Child``): the same driver, stores, retries,
checkpoints and resume as any sweep, so the benchmark adds no second way to run a trial. Every
child of a benchmark records into the benchmark's one Optuna storage and one MLflow store.

- ``tuned``: today's sweep per workload (its sampler, pruner and re-evaluation), one study.
- ``external``: quasi-random search (Optuna's ``QMCSampler``), ``trials`` per study, no pruning and
  no re-evaluation, ``studies`` studies with sampler and training seeds ``seed + k``.
- ``self``: no search (each optimizer at its defaults), one trial per study, ``studies`` repeats
  with seeds ``seed + k``, and 1.5 times the epochs (AlgoPerf's self-tuning budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from sweep.core.config import SWEEP, SweepConfig, find_config, parse_value, raw_values, read_yaml, validate
from sweep.core.errors import ConfigError

SECTION = "benchmark"
SELF_TUNING_BUDGET = 1.5  # AlgoPerf: a self-tuning submission gets 1.5x the external budget
RELATIVE = "relative:"


class Ruleset(str, Enum):
    TUNED = "tuned"
    EXTERNAL = "external"
    SELF = "self"


@dataclass(frozen=True)
class Target:
    """A workload's validation-accuracy target: a number, or a share of the best accuracy any
    optimizer reached on the workload in this benchmark (``relative:0.99``), which moves as the
    benchmark grows and is labelled as such wherever it is shown."""

    value: float | None = None
    fraction: float | None = None

    @property
    def relative(self) -> bool:
        return self.fraction is not None

    def text(self) -> str:
        return f"{RELATIVE}{self.fraction:g}" if self.relative else f"{self.value:g}"

    def resolve(self, best: float | None) -> float | None:
        """The accuracy to reach, given the best any optimizer reached (None: nothing yet)."""
        if not self.relative:
            return self.value
        return None if best is None else self.fraction * best

    @classmethod
    def parse(cls, key: str, given: Any) -> Target:
        if isinstance(given, str) and given.startswith(RELATIVE):
            share = parse_value(given[len(RELATIVE) :])
            if isinstance(share, (int, float)) and not isinstance(share, bool) and 0 < share <= 1:
                return cls(fraction=float(share))
        elif isinstance(given, (int, float)) and not isinstance(given, bool) and 0 < given <= 1:
            return cls(value=float(given))
        raise ConfigError(
            key, f"must be a validation accuracy in (0, 1] or relative:F with F in (0, 1] (e.g. 0.97), got {given!r}"
        )


# A workload's keys: the sweep keys it sets for its sweeps, and its target.
WORKLOAD_KEYS = ("dataset", "model", "epochs", "batch_size", "train_subset", "val_fraction", "eval_every_steps")
REQUIRED = ("dataset", "model", "epochs", "target")


@dataclass(frozen=True)
class Workload:
    name: str
    target: Target
    settings: Mapping[str, Any]  # WORKLOAD_KEYS given, validated with the sweep keys


@dataclass(frozen=True)
class Child:
    """One sweep of the benchmark: a workload's study ``study`` (0-based)."""

    workload: str
    study: int
    config: SweepConfig


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str
    output_dir: str
    ruleset: Ruleset
    studies: int
    r_max: float
    workloads: tuple[Workload, ...]
    children: tuple[Child, ...]
    base: SweepConfig  # the shared keys, as the first workload validates them

    @property
    def path(self) -> Path:
        return Path(self.output_dir).expanduser().resolve() / self.name

    def workload(self, name: str) -> Workload:
        return next(w for w in self.workloads if w.name == name)

    def to_dict(self, shared: Mapping[str, Any]) -> dict[str, Any]:
        """As saved in ``benchmark.yaml``: the section and the shared keys it was loaded with."""
        return {
            SECTION: {
                "ruleset": self.ruleset.value,
                "studies": self.studies,
                "r_max": self.r_max,
                "workloads": {
                    w.name: {**w.settings, "target": w.target.text() if w.target.relative else w.target.value}
                    for w in self.workloads
                },
            },
            **shared,
        }


def is_benchmark(config: str | None) -> bool:
    """Whether a config file (name in conf/ or path) declares a benchmark; False when it cannot be read."""
    try:
        return SECTION in read_yaml(find_config(config, "quickstart"))
    except ConfigError:
        return False


def load_benchmark(config: str | None, overrides: list[str] = ()) -> tuple[BenchmarkConfig, dict[str, Any]]:
    """The benchmark of a config file with overrides (``benchmark.studies=3``, ``trials=4`` ...),
    every child sweep validated; and the values to save. Raises ConfigError naming the key."""
    path = find_config(config, "quickstart")
    values = dict(read_yaml(path))
    return from_values(values, str(path), overrides)


def from_values(
    values: Mapping[str, Any], source: str, overrides: list[str] = ()
) -> tuple[BenchmarkConfig, dict[str, Any]]:
    """A benchmark from its saved or loaded values (``benchmark.yaml`` on resume) and overrides."""
    values = dict(values)
    section = values.pop(SECTION, None)
    if not isinstance(section, dict):
        raise ConfigError(SECTION, f"must be a mapping (ruleset, studies, r_max, workloads), got {section!r}")
    section = dict(section)
    shared_overrides = []
    for item in overrides:
        name, sep, text = item.partition("=")
        if name.startswith(f"{SECTION}.") and sep:
            _set_nested(section, name.split(".")[1:], parse_value(text), name)
        else:
            shared_overrides.append(item)
    raw = raw_values(values, source, shared_overrides)
    shared = {k: v for k, v in raw.items() if v is not None}
    bench = _build(section, raw)
    return bench, bench.to_dict(_plain(shared))


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as YAML can write them (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _set_nested(section: dict, path: list[str], value: Any, key: str) -> None:
    here = section
    for part in path[:-1]:
        if not isinstance(here.get(part), dict):
            raise ConfigError(key, f"{'.'.join(path[:-1])} is not a mapping in the benchmark section")
        here[part] = dict(here[part])
        here = here[part]
    here[path[-1]] = value


def _build(section: Mapping[str, Any], raw: Mapping[str, Any]) -> BenchmarkConfig:
    unknown = sorted(set(section) - {"ruleset", "studies", "r_max", "workloads"})
    if unknown:
        raise ConfigError(f"{SECTION}.{unknown[0]}", "unknown key; valid: ruleset, studies, r_max, workloads")
    given_rules = section.get("ruleset", Ruleset.EXTERNAL.value)
    if given_rules not in Ruleset._value2member_map_:
        raise ConfigError(f"{SECTION}.ruleset", f"unknown {given_rules!r}; choose from: tuned, external, self")
    ruleset = Ruleset(given_rules)
    studies = section.get("studies", 1 if ruleset == Ruleset.TUNED else 3)
    if isinstance(studies, bool) or not isinstance(studies, int) or not 1 <= studies <= 100:
        raise ConfigError(f"{SECTION}.studies", f"must be an integer in [1, 100], got {studies!r}")
    if ruleset == Ruleset.TUNED and studies != 1:
        raise ConfigError(
            f"{SECTION}.studies", "the tuned ruleset runs one study per workload (its TPE search); set studies=1"
        )
    r_max = section.get("r_max", 4.0)
    if isinstance(r_max, bool) or not isinstance(r_max, (int, float)) or not 1 < r_max <= 1000:
        raise ConfigError(f"{SECTION}.r_max", f"must be a number > 1 and <= 1000, got {r_max!r}")
    given = section.get("workloads")
    if not isinstance(given, dict) or not given:
        raise ConfigError(
            f"{SECTION}.workloads",
            "must map each workload's name to {dataset, model, epochs, target, ...}, got " + repr(given),
        )
    workloads = tuple(_workload(str(name), spec) for name, spec in given.items())
    name = raw.get("name") or SweepConfig().name
    output_dir = str(Path(raw.get("output_dir") or SweepConfig().output_dir).expanduser().resolve())
    children = tuple(
        Child(w.name, k, _child_config(w, k, ruleset, raw, Path(output_dir) / str(name)))
        for w in workloads
        for k in range(studies)
    )
    return BenchmarkConfig(
        name=str(name),
        output_dir=output_dir,
        ruleset=ruleset,
        studies=studies,
        r_max=float(r_max),
        workloads=workloads,
        children=children,
        base=children[0].config,
    )


def _workload(name: str, spec: Any) -> Workload:
    key = f"{SECTION}.workloads.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(key, f"must be a mapping of {', '.join(REQUIRED)} and optional keys, got {spec!r}")
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise ConfigError(f"{key}.{missing[0]}", "is required (a workload needs dataset, model, epochs and target)")
    unknown = sorted(set(spec) - set(WORKLOAD_KEYS) - {"target"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown key; valid: {', '.join((*WORKLOAD_KEYS, 'target'))}")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(key, "a workload's name must be letters, digits, _ or -")
    settings = {k: v for k, v in spec.items() if k != "target"}
    return Workload(name, Target.parse(f"{key}.target", spec["target"]), settings)


def _child_config(w: Workload, study: int, ruleset: Ruleset, raw: Mapping[str, Any], output: Path) -> SweepConfig:
    """The sweep that runs workload ``w``'s study ``study`` under the ruleset, validated like any
    sweep (a bad value names the workload's key); ``output`` is the benchmark's folder."""
    child = dict(raw)
    child.update(w.settings)
    seed = child.get("seed") or 0
    if not isinstance(seed, int) or isinstance(seed, bool):
        seed = 0  # refused by its own check below
    sweep_name = f"{output.name}.{w.name}" + (f".s{study}" if ruleset != Ruleset.TUNED else "")
    child.update(
        name=sweep_name,
        output_dir=str(output / "sweeps"),
        storage=raw.get("storage") or f"journal:///{output / 'optuna.journal'}",
        tracking_uri=raw.get("tracking_uri") or f"sqlite:///{output / 'mlflow.db'}",
        report_figures=False,  # the benchmark's report is the one read; `sweep report CHILD` draws one
    )
    if w.target.value is not None:
        child["target_accuracy"] = w.target.value
    if ruleset != Ruleset.TUNED:
        child.update(seed=seed + study, pruner="none", reeval_seeds=0)
    if ruleset == Ruleset.EXTERNAL:
        child["sampler"] = "qmc"
    if ruleset == Ruleset.SELF:
        epochs = child.get("epochs")
        if isinstance(epochs, int) and not isinstance(epochs, bool):
            child["epochs"] = math.ceil(SELF_TUNING_BUDGET * epochs)
        child.update(search=False, trials=1)
    try:
        return validate(child, SWEEP)
    except ConfigError as exc:
        if exc.key in w.settings:
            raise ConfigError(f"{SECTION}.workloads.{w.name}.{exc.key}", exc.message) from None
        raise
