"""Running a benchmark: its sweeps one after another (``sweep.core.benchmark``), then its report.

Each child sweep is launched exactly as ``sweep run`` launches one (``launch.prepare`` and
``launch.start``): the same checks, driver, retries, checkpoints and stop handling. The benchmark
folder holds ``benchmark.yaml`` (the config as run), the shared ``optuna.journal`` and
``mlflow.db``, ``sweeps/`` (one folder per child) and ``report/``; it is locked while a driver
runs it, like a sweep. A stopped benchmark is resumed by running it again: finished children are
skipped, an interrupted one resumes where it stopped, the rest run.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any

import yaml

from sweep.core.benchmark import BenchmarkConfig
from sweep.core.errors import ConfigError
from sweep.execution import launch
from sweep.execution.lanes import say
from sweep.report import benchmark as report
from sweep.stores.sweepdir import BENCHMARK, FINISHED, INTERRUPTED, RUNNING, SweepDir


@dataclass(frozen=True)
class BenchmarkResult:
    folder: SweepDir
    report: report.BenchmarkReport
    seconds: float


def check_resumable(bench: BenchmarkConfig, values: dict[str, Any], folder: SweepDir) -> None:
    """A benchmark that exists keeps its ruleset and workloads (its children's studies were run
    with them); more studies or trials may be added."""
    before = folder.saved_benchmark()
    if before is None:
        return
    was, now = before.get("benchmark", {}), values["benchmark"]
    for key in ("ruleset", "workloads", "r_max"):
        if was.get(key) != now.get(key):
            raise ConfigError(
                f"benchmark.{key}",
                f"benchmark {bench.name!r} exists with {key}={was.get(key)!r}, not {now.get(key)!r}; "
                "resume it as saved or pick a new name=",
            )


def run_benchmark(bench: BenchmarkConfig, values: dict[str, Any]) -> BenchmarkResult:
    """Run every child sweep not yet finished, then build the benchmark's report."""
    folder = SweepDir(bench.path)
    if folder.is_locked():
        raise ConfigError("name", f"benchmark {bench.name!r} is being run by another driver; wait for it or stop it")
    check_resumable(bench, values, folder)
    started = time.perf_counter()
    new = not folder.path.exists()
    with folder.claim() as bench_id:
        if bench_id is None:
            raise ConfigError("name", f"benchmark {bench.name!r} was just started by another driver")
        try:  # the stores (in this folder by default), the data and Ray checked before a sweep starts
            first = launch.prepare(bench.children[0].config)
        except ConfigError:
            if new:  # bad input leaves nothing behind
                shutil.rmtree(folder.path, ignore_errors=True)
            raise
        (folder / BENCHMARK).write_text(yaml.safe_dump(values, sort_keys=False))
        folder.write_state(RUNNING)
        try:
            for i, child in enumerate(bench.children):
                child_dir = SweepDir.of(child.config.output_dir, child.config.name)
                if child_dir.state() == FINISHED:
                    continue
                say(bench.name, f"sweep {i + 1}/{len(bench.children)}: {child.workload} study {child.study}")
                launch.start(first if i == 0 else launch.prepare(child.config))
            built = report.build(bench, bench_id, FINISHED)
        except BaseException:
            folder.write_state(INTERRUPTED)
            raise
        folder.write_state(FINISHED)
    return BenchmarkResult(folder, built, time.perf_counter() - started)
