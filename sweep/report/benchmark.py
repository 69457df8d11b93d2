"""A benchmark's report, read from its stores alone: each trial's time to its workload's target,
each optimizer's time per workload (the median over its studies), the performance profiles, the
score with a bootstrap interval, per-workload tables and the accuracy-compute fronts.

Definitions (AlgoPerf, Dahl et al. 2023): a study's time on a workload is its fastest trial to the
target (infinite if none reached it); an optimizer's time is the median over its studies; its
ratio on a workload is that time over the fastest optimizer's; its profile is the share of
workloads it reached within a ratio τ; its score is the area under the profile on [1, r_max]
over (r_max - 1). The arithmetic is ``profiles``; this module gathers what it needs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sweep.core.benchmark import BenchmarkConfig, Target
from sweep.core.keys import Attr
from sweep.core.outcome import Status
from sweep.core.target import CurvePoint, Reached, parse_curve, time_to_target
from sweep.report import profiles
from sweep.stores.studies import SweepStudy, outcome_of, study_name
from sweep.stores.sweepdir import SweepDir

PROFILE_POINTS = 200  # τ values the profile is drawn and tabled at


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial of the benchmark, as its Optuna record holds it."""

    workload: str
    optimizer: str
    study: int
    number: int
    status: Status
    curve: tuple[CurvePoint, ...]
    metrics: Mapping[str, float]
    hyperparameters: Mapping[str, Any]
    run_id: str | None
    reached: Reached | None = None  # filled once the workload's target is known

    @property
    def best_val(self) -> float | None:
        values = [p.val_accuracy for p in self.curve] or [self.metrics.get("best_val_accuracy", math.nan)]
        best = max(values)
        return best if math.isfinite(best) else None

    @property
    def train_seconds(self) -> float | None:
        return self.metrics.get("train_seconds")


@dataclass(frozen=True)
class WorkloadTarget:
    target: Target
    value: float | None  # the accuracy to reach (None: relative, and nothing measured yet)
    best: float | None  # the best validation accuracy any optimizer reached on the workload

    def text(self) -> str:
        if not self.target.relative:
            return f"{self.value:.4f}"
        if self.value is None:
            return f"{self.target.text()} (nothing measured yet)"
        return (
            f"{self.value:.4f} = {self.target.fraction:g} × best {self.best:.4f} "
            f"({self.target.text()}: moves as the benchmark grows)"
        )


@dataclass(frozen=True)
class Row:
    """One optimizer on one workload."""

    workload: str
    optimizer: str
    study_times: tuple[float, ...]  # each study's fastest time to target (inf: not reached)
    median_seconds: float
    median_steps: float | None
    median_images: float | None
    test_accuracies: tuple[float, ...]  # each study's best trial's test accuracy, where measured
    counts: Mapping[Status, int]
    fastest: TrialRecord | None

    @property
    def reached(self) -> int:
        return sum(math.isfinite(t) for t in self.study_times)

    @property
    def test_mean(self) -> float | None:
        return statistics.fmean(self.test_accuracies) if self.test_accuracies else None

    @property
    def test_std(self) -> float | None:
        return statistics.stdev(self.test_accuracies) if len(self.test_accuracies) > 1 else None


@dataclass(frozen=True)
class BenchmarkReport:
    name: str
    ruleset: str
    state: str
    r_max: float
    studies: int
    trials: int
    optimizers: tuple[str, ...]
    targets: Mapping[str, WorkloadTarget]
    rows: tuple[Row, ...]
    records: tuple[TrialRecord, ...]
    scores: Mapping[str, float]
    ranks: Mapping[str, int]
    intervals: Mapping[str, tuple[float, float]]
    taus: tuple[float, ...]
    profile: Mapping[str, list[float]]
    fronts: Mapping[str, Mapping[str, list[TrialRecord]]]
    generated: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    folder: Path | None = None
    run_id: str | None = None

    def ranked(self) -> list[str]:
        return sorted(self.optimizers, key=lambda o: (self.ranks.get(o, 10**6), o))

    def row(self, workload: str, optimizer: str) -> Row:
        return next(r for r in self.rows if r.workload == workload and r.optimizer == optimizer)


def collect(bench: BenchmarkConfig) -> list[TrialRecord]:
    """Every finished trial of every child sweep's studies (interrupted ones run again: not counted)."""
    records = []
    for child in bench.children:
        cfg = child.config
        for opt in cfg.optimizers:
            study = SweepStudy.find(cfg.storage, study_name(cfg.name, opt))
            if study is None:
                continue
            for trial in study.trials():
                outcome = outcome_of(trial)
                if outcome is None or not outcome.record.uses_budget:
                    continue
                records.append(
                    TrialRecord(
                        child.workload,
                        opt,
                        child.study,
                        trial.number,
                        outcome.status,
                        tuple(parse_curve(trial.user_attrs.get(Attr.CURVE))),
                        dict(outcome.metrics),
                        dict(trial.user_attrs.get(Attr.HYPERPARAMETERS) or {}),
                        trial.user_attrs.get(Attr.MLFLOW_RUN),
                    )
                )
    return records


def targets(bench: BenchmarkConfig, records: list[TrialRecord]) -> dict[str, WorkloadTarget]:
    """Each workload's target; a relative one from the best accuracy any trial reached there."""
    found = {}
    for w in bench.workloads:
        bests = [b for r in records if r.workload == w.name and (b := r.best_val) is not None]
        best = max(bests) if bests else None
        found[w.name] = WorkloadTarget(w.target, w.target.resolve(best), best)
    return found


def with_reached(records: list[TrialRecord], goal: Mapping[str, WorkloadTarget]) -> list[TrialRecord]:
    out = []
    for r in records:
        value = goal[r.workload].value
        reached = time_to_target(r.curve, value) if value is not None else None
        out.append(TrialRecord(**{**r.__dict__, "reached": reached}))
    return out


def _finite_median(values: list[float]) -> float | None:
    """The median over studies, infinite ones (never reached) included; None when that is infinite."""
    median = statistics.median(values) if values else math.inf
    return median if math.isfinite(median) else None


def workload_row(bench: BenchmarkConfig, workload: str, optimizer: str, records: list[TrialRecord]) -> Row:
    """The optimizer's studies on the workload: each study's fastest trial to target, their median."""
    mine = [r for r in records if r.workload == workload and r.optimizer == optimizer]
    study_times, steps, images, tests, fastest = [], [], [], [], None
    for k in range(bench.studies):
        study = [r for r in mine if r.study == k]
        hits = sorted((r for r in study if r.reached is not None), key=lambda r: r.reached.seconds)
        study_times.append(hits[0].reached.seconds if hits else math.inf)
        steps.append(hits[0].reached.steps if hits else math.inf)  # the median study's, like its time
        images.append(hits[0].reached.images if hits else math.inf)
        if hits and (fastest is None or hits[0].reached.seconds < fastest.reached.seconds):
            fastest = hits[0]
        tested = [r for r in study if "test_accuracy" in r.metrics and r.best_val is not None]
        if tested:  # the study's result on the test set: its best trial by validation accuracy
            tests.append(max(tested, key=lambda r: r.best_val).metrics["test_accuracy"])
    counts = {s: sum(r.status == s for r in mine) for s in Status if s != Status.INTERRUPTED}
    return Row(
        workload,
        optimizer,
        tuple(study_times),
        statistics.median(study_times) if study_times else math.inf,
        _finite_median(steps),
        _finite_median(images),
        tuple(tests),
        counts,
        fastest,
    )


def fronts(records: list[TrialRecord], optimizers, workloads) -> dict[str, dict[str, list[TrialRecord]]]:
    """Per workload and optimizer, the trials on the Pareto front of (best validation accuracy,
    training seconds): none reaches more accuracy in less time."""
    out: dict[str, dict[str, list[TrialRecord]]] = {}
    for w in workloads:
        out[w] = {}
        for opt in optimizers:
            mine = [
                r
                for r in records
                if r.workload == w and r.optimizer == opt and r.best_val is not None and r.train_seconds is not None
            ]
            keep = profiles.pareto_front([(r.best_val, r.train_seconds) for r in mine])
            out[w][opt] = [mine[i] for i in keep]
    return out


def compute(bench: BenchmarkConfig, records: list[TrialRecord], state: str) -> BenchmarkReport:
    """Everything the report shows, from the trials' records."""
    goal = targets(bench, records)
    records = with_reached(records, goal)
    optimizers = tuple(dict.fromkeys(o for c in bench.children for o in c.config.optimizers))
    workloads = [w.name for w in bench.workloads]
    rows = [workload_row(bench, w, o, records) for w in workloads for o in optimizers]
    study_times = {
        w: {o: list(next_row.study_times) for o in optimizers for next_row in [_find(rows, w, o)]} for w in workloads
    }
    times = {w: {o: _find(rows, w, o).median_seconds for o in optimizers} for w in workloads}
    ratios = profiles.performance_ratios(times)
    scores = profiles.score(ratios, bench.r_max)
    taus = tuple(1 + (bench.r_max - 1) * i / (PROFILE_POINTS - 1) for i in range(PROFILE_POINTS))
    return BenchmarkReport(
        name=bench.name,
        ruleset=bench.ruleset.value,
        state=state,
        r_max=bench.r_max,
        studies=bench.studies,
        trials=bench.base.trials,
        optimizers=optimizers,
        targets=goal,
        rows=tuple(rows),
        records=tuple(records),
        scores=scores,
        ranks=profiles.ranks(scores),
        intervals=profiles.bootstrap_scores(study_times, bench.r_max),
        taus=taus,
        profile=profiles.profile(ratios, list(taus)),
        fronts=fronts(records, optimizers, workloads),
    )


def _find(rows: list[Row], workload: str, optimizer: str) -> Row:
    return next(r for r in rows if r.workload == workload and r.optimizer == optimizer)


def build(bench: BenchmarkConfig, bench_id: str | None = None, state: str | None = None) -> BenchmarkReport:
    """Read, compute, write the files and publish them to MLflow (the benchmark's own experiment)."""
    from sweep.report import benchmark_files

    folder = SweepDir(bench.path)
    state = state or folder.state()
    report = compute(bench, collect(bench), state)
    written = benchmark_files.write(report, folder.report)
    run_id = benchmark_files.publish(report, written, bench, bench_id or folder.read_id() or "")
    return BenchmarkReport(**{**report.__dict__, "folder": written, "run_id": run_id})
