"""Short trials at the speed of their training: a small sweep's wall time against its floor.

The sweep is the quick start's search as a user runs it (``sweep run quickstart``: 7 optimizers x
6 trials x 3 epochs on digits, 2 workers, no pruning, no re-evaluation, no figures), in a fresh
process, launch to exit. Its floor is what no sweep of these trials can beat: Ray's start (launch
to ``init_ray`` returned, in the same run) plus the trials' training seconds (``final_train_seconds``
summed) / workers. Target: wall <= 1.25x the floor.

Variants, one run each per repeat, repeats interleaved so that a burst of load from other jobs on a
shared machine falls on all of them:

- ``now``: this tree as it is;
- ``off``: this tree with no trial prepared ahead (``driver.PREPARED_AHEAD = 0``), the one
  optimisation with a switch;
- ``base`` (``--base REF``): a git worktree of REF, e.g. the commit before those changes.

Each run is the real CLI (``sweep.cli.main``) in a child process that also times, from inside:
Ray's start, the driver's phases (``Driver.prepare_trial``, ``collect_task``, ``tidy``, ``wait``)
and when each trial was handed to Ray (``Driver.flight``). After it exits, the stores give each
trial's own timings (``final_*``: setup, train, eval, report, run_trial's ``seconds``, and where the
code records it ``queued_seconds``) and its run's close (MLflow ``end_time``). Per trial, medians:

- in run_trial: ``train``, ``eval`` (validation and test passes), ``report`` (the per-epoch Optuna and
  MLflow calls), ``other`` (the model's set-up, checkpoint captures);
- ``setup``: the worker's study load and attempt attributes; ``finish``: from run_trial's end to the
  run closed (the last checkpoint's wait, the MLflow flush, Optuna's attributes and tell, the run's
  close), known where ``queued_seconds`` says when the worker began;
- ``cycle``: the time between two trials' ends on one worker process; ``overhead`` = cycle - the
  trial's training: what a worker slot spends on a trial besides training it; ``outside`` = cycle -
  run_trial's seconds: the part outside run_trial (set-up, finish, Ray's dispatch, the driver's
  hand-off);
- ``driver``: the driver's own calls per trial (prepare + collect + tidy; with trials prepared
  ahead these overlap training).

Per run: ``cold`` (Ray up to the first trial's start on a worker: the workers' imports, torch's
first optimizer) and ``tail`` (the last run closed to the process's exit: the report, Ray's
shutdown).

Usage:  .venv/bin/python bench/short_trials.py [--size ci|full] [--json PATH] [--base REF]
        [--repeats N] [--variants now off base] [--trials 6]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
NAME = "speed"
WORKERS = 2
TARGET = 1.25
REPEATS = {"ci": 2, "full": 3}


def overrides(output_dir: str, trials: int) -> list[str]:
    """The sweep, as the issue measured it."""
    args = [
        f"name={NAME}",
        f"output_dir={output_dir}",
        f"trials={trials}",
        "epochs=3",
        f"workers={WORKERS}",
        "reeval_seeds=0",
        "pruner=none",
        "report_figures=false",
    ]
    return args


# ---- the child: one sweep through the CLI, timed from inside ----------------------------------------


def child(spec: dict[str, Any]) -> None:
    """Run ``sweep run`` on the code under ``spec["root"]`` with the driver's phases timed; the
    timings go to ``spec["timings"]`` once the sweep is done (before the CLI prints and exits)."""
    sys.path.insert(0, spec["root"])
    import sweep.execution.driver as driver
    import sweep.execution.launch as launch

    stamps: dict[str, float] = {}
    spent: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    sent: dict[str, float] = {}

    def timed(owner, name: str) -> None:
        original = getattr(owner, name, None)
        if original is None:  # the base commit may lack a phase
            return

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - began
                calls[name] += 1

        setattr(owner, name, wrapper)

    for name in ("prepare_trial", "collect_task", "tidy", "wait", "run", "finish", "report"):
        timed(driver.Driver, name)
    flight = driver.Driver.flight

    def stamped_flight(lane, *tasks, pack=None):
        for task in tasks:  # handed to Ray now (this tree stamps the task itself)
            sent[f"{lane.study.name}#{task.number}"] = getattr(task, "sent_at", 0.0) or time.time()
        return flight(lane, *tasks, pack=pack)

    driver.Driver.flight = staticmethod(stamped_flight)
    init_ray, run_sweep = launch.init_ray, launch.run_sweep

    def timed_init_ray(*args, **kwargs):
        init_ray(*args, **kwargs)
        stamps["ray_up"] = time.time()

    def timed_run_sweep(cfg):
        result = run_sweep(cfg)
        stamps["swept"] = time.time()
        Path(spec["timings"]).write_text(json.dumps({"stamps": stamps, "spent": spent, "calls": calls, "sent": sent}))
        return result

    launch.init_ray, launch.run_sweep = timed_init_ray, timed_run_sweep
    if spec["off"] and hasattr(driver, "PREPARED_AHEAD"):
        driver.PREPARED_AHEAD = 0
    sys.argv = ["sweep", "run", "quickstart", *spec["overrides"]]
    from sweep.cli import main

    sys.exit(main())


# ---- the parent: run, read the stores, break the time down --------------------------------------------


def run_once(variant: str, root: Path, trials: int, work: Path) -> dict[str, Any]:
    """One sweep in a fresh process; its timings and its trials' records."""
    out = work / f"{variant}-{time.monotonic_ns()}"
    spec = {
        "root": str(root),
        "overrides": overrides(str(out), trials),
        "off": variant == "off",
        "timings": str(work / f"timings-{time.monotonic_ns()}.json"),
    }
    env = {**os.environ, "PYTHONPATH": str(root)}  # the Ray workers import the same tree
    load = os.getloadavg()[0]
    spawned = time.time()
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", json.dumps(spec)], cwd=root, env=env, capture_output=True, text=True
    )
    exited = time.time()
    if proc.returncode != 0 or not Path(spec["timings"]).exists():
        raise RuntimeError(f"{variant}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    timings = json.loads(Path(spec["timings"]).read_text())
    return {
        "variant": variant,
        "spawned": spawned,
        "exited": exited,
        "load_1m": load,
        **timings,
        "trials": read_trials(out / NAME),
    }


def read_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every finished trial's timings from Optuna and its run's close from MLflow."""
    import optuna
    from mlflow import MlflowClient
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        for t in optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False):
            if t.datetime_complete is None:
                continue
            a = t.user_attrs
            final = {k[len("final_") :]: v for k, v in a.items() if k.startswith("final_") and k.endswith("seconds")}
            run = client.get_run(a["mlflow_run_id"])
            rows.append(
                {
                    "key": f"{summary.study_name}#{t.number}",
                    "worker": a.get("worker", "?"),
                    "told": t.datetime_complete.timestamp(),
                    "closed": run.info.end_time / 1000 if run.info.end_time else t.datetime_complete.timestamp(),
                    **final,
                }
            )
    return rows


def breakdown(r: dict[str, Any]) -> dict[str, Any]:
    """One run's figures: wall, floor, ratio, and where the time went (see the module's docstring)."""
    trials, sent = r["trials"], r["sent"]
    for t in trials:
        t["sent"] = sent.get(t["key"])
        if t["sent"] is not None and "queued_seconds" in t:
            t["began"] = t["sent"] + t["queued_seconds"]
            t["finish"] = t["closed"] - (t["began"] + t.get("setup_seconds", 0.0) + t["seconds"])
        t["other"] = t["seconds"] - t["train_seconds"] - t.get("eval_seconds", 0.0) - t.get("report_seconds", 0.0)
    cycles = []
    by_worker: dict[str, list] = collections.defaultdict(list)
    for t in trials:
        by_worker[t["worker"]].append(t)
    for same in by_worker.values():
        same.sort(key=lambda t: t["closed"])
        cycles += [(b["closed"] - a["closed"], b["seconds"], b["train_seconds"]) for a, b in zip(same, same[1:])]
    wall = r["exited"] - r["spawned"]
    ray_start = r["stamps"]["ray_up"] - r["spawned"]
    train = sum(t["train_seconds"] for t in trials)
    floor = ray_start + train / WORKERS
    spent, calls = r["spent"], r["calls"]
    began = [t["began"] for t in trials if "began" in t]
    n = len(trials)
    return {
        "variant": r["variant"],
        "wall_s": wall,
        "ray_start_s": ray_start,
        "train_total_s": train,
        "floor_s": floor,
        "wall/floor": wall / floor,
        "cold_s": min(began) - r["stamps"]["ray_up"] if began else None,
        "trial_phase_s": max(t["closed"] for t in trials) - min(t["sent"] for t in trials if t["sent"]),
        "tail_s": r["exited"] - max(t["closed"] for t in trials),
        "trials": n,
        "setup_ms": _ms(t.get("setup_seconds") for t in trials),
        "train_ms": _ms(t["train_seconds"] for t in trials),
        "eval_ms": _ms(t.get("eval_seconds") for t in trials),
        "report_ms": _ms(t.get("report_seconds") for t in trials),
        "other_ms": _ms(t["other"] for t in trials),
        "finish_ms": _ms(t.get("finish") for t in trials),
        "queued_ms": _ms(t.get("queued_seconds") for t in trials),
        "cycle_ms": _ms(c for c, _, _ in cycles),
        "overhead_ms": _ms(c - t for c, _, t in cycles),
        "outside_ms": _ms(c - s for c, s, _ in cycles),
        "driver_ms": 1000 * sum(spent.get(k, 0.0) for k in ("prepare_trial", "collect_task", "tidy")) / n,
        "prepare_ms": 1000 * spent.get("prepare_trial", 0.0) / max(1, calls.get("prepare_trial", 0)),
        "load_1m": r["load_1m"],
    }


def _ms(values) -> float | None:
    present = [v for v in values if v is not None]
    return 1000 * statistics.median(present) if present else None


def worktree(ref: str, work: Path) -> Path:
    """A detached worktree of ``ref`` (removed by ``drop_worktree``)."""
    path = work / f"base-{ref.replace('/', '_')}"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=ROOT, check=True, capture_output=True)
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)


def summarize(rows: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    """Per variant, the median of each figure over its repeats (side by side)."""
    out = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        keys = [k for k in mine[0] if k != "variant"]
        out.append({"variant": f"{v} (median of {len(mine)})", **{k: _median([r[k] for r in mine]) for k in keys}})
    return out


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def measure(variants: list[str], repeats: int, base: str | None, trials: int) -> list[dict[str, Any]]:
    """Every variant once per repeat, repeats interleaved; one breakdown per run."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-short-") as tmp:
        work = Path(tmp)
        roots = {"now": ROOT, "off": ROOT}
        if "base" in variants:
            roots["base"] = worktree(base, work)
        try:
            for repeat in range(repeats):
                for v in variants:
                    print(f"repeat {repeat + 1}/{repeats}: {v} ...", flush=True)
                    rows.append(breakdown(run_once(v, roots[v], trials, work)))
                    print(f"  wall {rows[-1]['wall_s']:.1f} s, wall/floor {rows[-1]['wall/floor']:.2f}", flush=True)
        finally:
            if "base" in roots:
                drop_worktree(roots["base"])
    return rows


def side_by_side(summary: list[dict[str, Any]]) -> str:
    """The variants' medians as columns, one figure per line."""
    lines = [f"{'':18}" + "".join(f"{s['variant'].split(' ')[0]:>12}" for s in summary)]
    for key in [k for k in summary[0] if k != "variant"]:
        cells = ("-" if s[key] is None else f"{s[key]:.3g}" for s in summary)
        lines.append(f"{key:18}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return 0
    sys.path.insert(0, str(ROOT))
    from bench.suite import BenchResult, Headline, finish, parser

    ap: argparse.ArgumentParser = parser(__doc__.splitlines()[0])
    ap.add_argument("--base", default=None, help="also run a git worktree of this ref (the code before)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per variant (default: ci 2, full 3)")
    ap.add_argument("--variants", nargs="+", default=None, choices=["now", "off", "base"])
    ap.add_argument("--trials", type=int, default=6, help="trials per optimizer (7 optimizers)")
    args = ap.parse_args(argv)
    variants = args.variants or (["base"] if args.base else []) + ["off", "now"]
    if "base" in variants and not args.base:
        ap.error("--variants base needs --base REF")
    repeats = args.repeats or REPEATS[args.size.value]
    result = BenchResult("short_trials", args.size)
    result.params = {"variants": variants, "repeats": repeats, "base": args.base}
    result.params["sweep"] = ["run", "quickstart", *overrides("<tmp>", args.trials)]
    rows = measure(variants, repeats, args.base, args.trials)
    summary = summarize(rows, variants)
    result.rows = rows + summary
    print(f"\nside by side (medians of {repeats}):\n{side_by_side(summary)}")
    now = next((s for s in summary if s["variant"].startswith("now")), summary[-1])
    note = (
        f"{now['wall_s']:.1f} s against {now['floor_s']:.1f} s; cold start {now['cold_s'] or 0:.1f} s, "
        f"tail {now['tail_s']:.1f} s, {now['overhead_ms'] or 0:.0f} ms per trial beyond its training"
    )
    result.headlines.append(
        Headline("sweep wall / floor", now["wall/floor"], "x", f"<= {TARGET}", now["wall/floor"] <= TARGET, note)
    )
    for s in summary:
        note = f"ratio {s['wall/floor']:.2f}, {s['overhead_ms'] or 0:.0f} ms per trial beyond training"
        result.headlines.append(Headline(f"wall, {s['variant']}", s["wall_s"], "s", note=note))
    result.notes.append(f"load average {os.getloadavg()[0]:.2f} at the end; the machine is shared, read the ratios")
    finish(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
