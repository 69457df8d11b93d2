"""Worker utilization: of the W x wall seconds W workers had, how many went into training?

K trials of fixed, known work (SGD with a fixed lr, constant schedule, no pruning, random
sampler: nothing searched changes the work; synthetic 3x32x32 / simple_cnn, epochs calibrated so a trial
trains about ``--trial-seconds``) run through the real product in this process:
``sweep.execution.launch.run_sweep(load_config(...))``, re-evaluation and figures off, a temporary
output directory. Utilization = sum of the trials' training and validation seconds (``final_train_seconds`` +
``final_eval_seconds``: what a hand-written loop does too) / (W x wall), wall running from the first trial's
start to the last trial's end as Optuna records them (``datetime_start``, ``datetime_complete``), so start-up is
excluded; it is also given with start-up (wall = the whole ``run_sweep`` call). Target: >= 0.95
at W=2 with ~2-s trials.

The rest of W x wall is broken out as far as the stores allow, per trial and in total:
- in ``run_trial`` but not training (``final_seconds - final_train_seconds``): per-epoch
  validation, the test evaluation, tensors and model set-up, and the reporter's Optuna and MLflow
  calls (they run inside ``run_trial``);
- outside ``run_trial`` in the trial's span (span - ``final_seconds``): the driver's MLflow run
  and attributes after ``ask``, Ray's dispatch and the data hand-off, the worker's study load and
  attributes, and after training the flush and ``finish_trial``; MLflow's timestamps split it
  into before training (run created -> the first epoch's training began) and after (the last
  epoch logged -> the trial complete);
- idle slots: W x wall - the trials' spans (the driver collecting a trial and asking for the
  next: the gap between a trial's end and the next start on the same worker process).
A worker process's first trial also pays its imports and torch's first optimizer (seconds): the
utilization after each process's first trial is given too, without a target.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite import BenchResult, Headline, Size, finish, median, parser  # noqa: E402

TRIALS = {Size.CI: 8, Size.FULL: 24}
TARGET = 0.95
LR = 0.05


DATASET = "synthetic"  # 3x32x32: an epoch of about a second on one core, so 2 epochs make a ~2-s trial


def overrides(output_dir: str, workers: int, trials: int, epochs: int, name: str = "") -> list[str]:
    return [
        f"name={name or f'util-w{workers}'}",
        f"dataset={DATASET}",
        "optimizers=[sgd]",
        f"optimizer.lr={LR}",
        "schedules=[constant]",
        "pruner=none",
        "sampler=random",
        f"trials={trials}",
        f"epochs={epochs}",
        f"workers={workers}",
        "reeval_seeds=0",
        "report_figures=false",
        f"output_dir={output_dir}",
    ]


def calibrate(output_dir: str, trial_seconds: float) -> tuple[int, float]:
    """Epochs for a trial that trains ``trial_seconds``, from a short trial in this process on one
    thread (a worker's ``num_cpus=1``); returns (epochs, seconds per epoch)."""
    import torch

    from sweep.core.config import SWEEP, load_config
    from sweep.core.datasets import load_data
    from sweep.train.solo import run_trial

    cfg = load_config("quickstart", overrides(output_dir, 1, 1, 3), default="quickstart", mode=SWEEP)
    tc = cfg.trial_config(optimizer="sgd", optimizer_params={"lr": LR}, schedule="constant")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_trial(tc, load_data(cfg))
    finally:
        torch.set_num_threads(threads)
    per_epoch = median(h.epoch_seconds for h in result.history[1:])  # the first epoch warms up
    return max(1, round(trial_seconds / per_epoch)), per_epoch


def mlflow_times(uri: str, run_id: str) -> dict[str, float]:
    """The run's creation (driver, after ask) and each epoch's log stamp (worker, after the epoch's
    validation), epoch seconds; all in epoch seconds."""
    from sweep.stores import tracking

    client = tracking.client(uri)
    run = client.get_run(run_id)
    history = sorted(client.get_metric_history(run_id, "epoch_seconds"), key=lambda m: m.step)
    times = {"run_created": run.info.start_time / 1000}
    if history:
        times["first_epoch_logged"] = history[0].timestamp / 1000
        times["first_epoch_seconds"] = history[0].value
        times["last_epoch_logged"] = history[-1].timestamp / 1000
    return times


def measure(workers: int, trials: int, epochs: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One sweep; per-trial rows and the totals."""

    from sweep.core.config import SWEEP, load_config
    from sweep.core.keys import Attr
    from sweep.execution.launch import run_sweep
    from sweep.stores.studies import SweepStudy, study_name

    with tempfile.TemporaryDirectory(prefix="bench-util-") as out:
        # start-up first: a W-trial sweep in the same Ray warms the worker processes (imports, the
        # first optimizer, the data's copy), which `bench/startup.py` measures on its own
        run_sweep(
            load_config(
                "quickstart",
                overrides(out, workers, workers, 1, name=f"util-warm-w{workers}"),
                default="quickstart",
                mode=SWEEP,
            )
        )
        cfg = load_config("quickstart", overrides(out, workers, trials, epochs), default="quickstart", mode=SWEEP)
        launched = time.time()
        result = run_sweep(cfg)
        whole = time.time() - launched
        stores = result.sweep_dir.stores(cfg.storage, cfg.tracking_uri)
        study = SweepStudy.find(stores.storage, study_name(cfg.name, "sgd"))
        records = [t for t in study.trials() if t.datetime_complete is not None]
        rows: list[dict[str, Any]] = []
        for t in records:
            start, end = t.datetime_start.timestamp(), t.datetime_complete.timestamp()
            a = t.user_attrs
            seconds, train = a.get("final_seconds", 0.0), a.get("final_train_seconds", 0.0)
            evaluation, report = a.get("final_eval_seconds", 0.0), a.get("final_report_seconds", 0.0)
            row = {
                "workers": workers,
                "trial": t.number,
                "worker": a.get("worker", "?"),
                "status": a.get("status", t.state.name),
                "start_s": start - launched,
                "span_s": end - start,
                "train_s": train,
                "eval_s": evaluation,
                "run_trial_s": seconds,
                "report_s": report,  # Optuna report + should_prune and MLflow per epoch (inside run_trial)
                "in_run_trial_other_s": seconds - train - evaluation - report,  # tensors, model, checkpoints
                "worker_setup_s": a.get("final_setup_seconds", 0.0),  # study load, attempt attributes
                "outside_run_trial_s": (end - start) - seconds,
            }
            m = mlflow_times(stores.tracking_uri, a[Attr.MLFLOW_RUN]) if Attr.MLFLOW_RUN in a else {}
            if "first_epoch_logged" in m:
                # validation of epoch 1 runs between its training loop and its log stamp: counted
                # as "before" here, so "before" is an upper bound of set-up + dispatch
                training_began = m["first_epoch_logged"] - m["first_epoch_seconds"]
                row.update(
                    ask_to_run_created_s=m["run_created"] - start,
                    run_created_to_training_s=training_began - m["run_created"],
                    last_epoch_logged_to_complete_s=end - m["last_epoch_logged"],
                )
            row["_start"], row["_end"] = start, end
            rows.append(row)
    # the gap between one trial's end and the next start on the same worker process
    gaps: list[float] = []
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_worker[row["worker"]].append(row)
    for same in by_worker.values():
        same.sort(key=lambda r: r["_start"])
        for prev, nxt in zip(same, same[1:]):
            nxt["gap_after_previous_s"] = nxt["_start"] - prev["_end"]
            gaps.append(nxt["_start"] - prev["_end"])
    # after each worker process's first trial (its imports, torch's first optimizer): the steady state
    steady_train = sum(r["train_s"] + r["eval_s"] for same in by_worker.values() for r in same[1:])
    steady_wall = sum(same[-1]["_end"] - same[0]["_end"] for same in by_worker.values())
    first, last = min(r["_start"] for r in rows), max(r["_end"] for r in rows)
    wall = last - first
    capacity = workers * wall
    train = sum(r["train_s"] for r in rows)
    evaluation = sum(r["eval_s"] for r in rows)
    useful = train + evaluation  # what a hand-written loop also does: training steps and validation passes
    spans = sum(r["span_s"] for r in rows)
    report = sum(r["report_s"] for r in rows)
    inside = sum(r["in_run_trial_other_s"] for r in rows)
    setup = sum(r["worker_setup_s"] for r in rows)
    outside = sum(r["outside_run_trial_s"] for r in rows)
    total = {
        "workers": workers,
        "trials": len(rows),
        "epochs": epochs,
        "wall_s": wall,
        "whole_run_sweep_s": whole,
        "to_first_trial_s": first - launched,
        "train_s": train,
        "eval_s": evaluation,
        "utilization": useful / capacity,
        "utilization_training_steps_only": train / capacity,
        "utilization_with_startup": useful / (workers * whole),
        "utilization_after_first_trial": steady_train / steady_wall if steady_wall > 0 else None,
        "worker_processes": len(by_worker),
        "share_store_calls_per_epoch": report / capacity,
        "share_in_run_trial_other": inside / capacity,
        "share_worker_setup": setup / capacity,
        "share_outside_run_trial": outside / capacity,  # driver ask + MLflow run, dispatch, data, setup, finish
        "share_idle_slots": (capacity - spans) / capacity,
        "median_gap_same_worker_s": median(gaps) if gaps else None,
        "median_ask_to_run_created_s": _median_of(rows, "ask_to_run_created_s"),
        "median_run_created_to_training_s": _median_of(rows, "run_created_to_training_s"),
        "median_last_epoch_logged_to_complete_s": _median_of(rows, "last_epoch_logged_to_complete_s"),
        "statuses": ",".join(sorted({r["status"] for r in rows})),
        "load_1m": os.getloadavg()[0],
    }
    for row in rows:
        del row["_start"], row["_end"]
    return rows, total


def _median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[2], help="W values to run (default 2)")
    ap.add_argument("--trials", type=int, default=None, help="K (default: ci 8, full 24)")
    ap.add_argument("--trial-seconds", type=float, default=2.0, help="training seconds per trial to calibrate to")
    ap.add_argument("--epochs", type=int, default=None, help="fix the epochs per trial (skips calibration)")
    args = ap.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    trials = args.trials or TRIALS[args.size]
    result = BenchResult("utilization", args.size)
    with tempfile.TemporaryDirectory(prefix="bench-util-cal-") as cal:
        if args.epochs:
            epochs, per_epoch = args.epochs, None
        else:
            epochs, per_epoch = calibrate(cal, args.trial_seconds)
    result.params = {
        "trials": trials,
        "epochs": epochs,
        "calibrated_epoch_s": per_epoch,
        "workers": args.workers,
        "trial_seconds": args.trial_seconds,
        "config": overrides("<tmp>", args.workers[0], trials, epochs),
    }
    totals = []
    for w in args.workers:
        rows, total = measure(w, trials, epochs)
        result.rows += rows
        totals.append(total)
    result.rows += [{"what": "total", **t} for t in totals]
    for t in totals:
        w = t["workers"]
        note = (
            f"{t['trials']} trials x {epochs} epochs, {(t['train_s'] + t['eval_s']) / t['trials']:.2f} s "
            f"training and validation each; rest: {t['share_store_calls_per_epoch']:.1%} per-epoch store calls, "
            f"{t['share_in_run_trial_other']:.1%} other in run_trial, {t['share_outside_run_trial']:.1%} outside "
            f"run_trial (of which worker set-up {t['share_worker_setup']:.1%}), "
            f"{t['share_idle_slots']:.1%} idle slots"
        )
        result.headlines.append(
            Headline(
                f"utilization W={w}",
                t["utilization"],
                "",
                f">= {TARGET}" if w == 2 else "",
                t["utilization"] >= TARGET if w == 2 else None,
                note,
            )
        )
        result.headlines.append(
            Headline(
                f"utilization W={w} with start-up",
                t["utilization_with_startup"],
                "",
                note=f"whole run_sweep {t['whole_run_sweep_s']:.1f} s",
            )
        )
        result.headlines.append(
            Headline(
                f"utilization W={w} after each worker's first trial",
                t["utilization_after_first_trial"],
                "",
                note=f"{t['worker_processes']} worker processes; per process, from its "
                "first trial's end to its last trial's end",
            )
        )
    import ray

    ray.shutdown()
    finish(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
