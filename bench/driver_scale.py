"""The driver's cost per trial as a study grows to 1,000 trials, on the journal file and PostgreSQL.

One optimizer's study (momentum: lr, one_minus_momentum, the schedule and its parameters; the
quick-start config) is opened the product's way (``SweepStudy.open``: TPE from
``make_sampler("tpe", seed, trials)``, the median pruner) and fed n trials, one after another,
in this process, through the same calls the product makes, with a synthetic objective (no
training):

  driver  ask+sample   ``study.ask()`` + ``sweep.execution.search.sample_trial`` (Driver.submit): TPE's cost
                       grows with the trials it fits;
          attrs        the two ``trial.set_user_attr`` calls of Driver.submit (mlflow_run_id,
                       hyperparameters);
          after        what the driver does per collected trial (Driver.tidy_checkpoints): read
                       every trial, classify them, find the best (the checkpoint deletes left out);
  worker  (sweep/execution/worker.py, here in-process, one after another, so without contention, but on its
          own storage object, as a worker process has: the driver reads the worker's writes back)
          open         ``SweepStudy.load`` + ``record`` + ``live_trial`` + 4 attempt/node attrs;
          epochs       ``trial.report`` + ``trial.should_prune`` per epoch (E epochs unless pruned);
          finish       ``SweepStudy.finish``: final attrs + ``tell``.

Each trial's parts are timed and summarised in windows (first, middle and last w trials, e.g.
1-100, 401-500, 901-1000 at n=1000). From the driver's ms per trial in the last window:
workers one driver keeps busy = trial seconds / driver seconds per trial (the driver is one
thread: past that many workers, trials wait for it). The driver's MLflow call per trial
(``SweepTracker.trial_run``: a search for an existing run, create_run, log_batch of params) is
timed separately against an SQLite tracking store, since it does not depend on the Optuna storage.

Storages: ``journal:///<tmp>/optuna.journal`` (the product's default) and
``postgresql://postgres@127.0.0.1:5432/test`` (--pg-url; skipped, said so, when it does not
answer), with a unique study name deleted at the end.

Sizes: ci = 200 trials; full = 1,000 trials.

Usage: .venv/bin/python bench/driver_scale.py [--size ci|full] [--json PATH] [--trials N]
           [--storages journal postgresql] [--pg-url URL] [--epochs 6] [--no-mlflow]
           [--cached-worker-storage]
"""

from __future__ import annotations

import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite import BenchResult, Headline, Size, finish, parser, report_until_pruned  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
OPTIMIZER = "momentum"
TRIAL_SECONDS = (2.0, 10.0, 60.0)
SIZES = {Size.CI: 200, Size.FULL: 1000}
DRIVER_PARTS = ("ask+sample", "attrs", "after")
WORKER_PARTS = ("open", "epochs", "finish")


@dataclass
class Timings:
    """Seconds per trial, by part; ``pruned`` marks trials the median pruner stopped."""

    parts: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in DRIVER_PARTS + WORKER_PARTS})
    epochs: list[int] = field(default_factory=list)

    def driver(self, i: int) -> float:
        return sum(self.parts[p][i] for p in DRIVER_PARTS)

    def worker(self, i: int) -> float:
        return sum(self.parts[p][i] for p in WORKER_PARTS)


def windows(n: int) -> list[tuple[int, int]]:
    """First, middle and last w trials (1-based, inclusive)."""
    w = min(100, max(10, n // 5))
    mid = max(w + 1, n // 2 - w + 1)
    return sorted({(1, w), (mid, min(n, mid + w - 1)), (max(1, n - w + 1), n)})  # fewer when n is small


def synthetic_curve(params: dict[str, Any], epochs: int, rng: random.Random) -> list[float]:
    """A plausible validation curve: best near lr*(1+...)=0.05, rising with the epochs, noisy."""
    lr = float(params.get("lr", 0.01))
    final = max(0.1, 0.97 - 0.12 * abs(math.log10(lr) + 1.3) - rng.random() * 0.05)
    return [min(1.0, final * (1 - math.exp(-(e + 1) / 1.5)) + rng.gauss(0, 0.005)) for e in range(epochs)]


def run_storage(url: str, n: int, epochs: int, seed: int = 0, cached_worker: bool = False) -> Timings:
    """n trials through the product's driver and worker calls on one storage; the study is deleted."""
    import optuna

    from sweep.core.config import load_config
    from sweep.core.keys import Attr
    from sweep.core.outcome import Status, Tally
    from sweep.execution.search import chosen_hyperparameters, sample_trial
    from sweep.stores.studies import SweepStudy, make_pruner, open_storage, outcome_of

    name = f"bench-driver-scale-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        "quickstart",
        [f"optimizers=[{OPTIMIZER}]", f"trials={n}", f"epochs={epochs}", "pruner=median", "name=" + name],
        mode="sweep",
    )
    rng = random.Random(seed)
    t = Timings()
    # the worker's own storage object, as in its own process: the driver's then reads the workers'
    # writes back from the file or the database (open_storage would hand both the same object)
    worker_storage = open_storage.__wrapped__(url)
    if cached_worker and isinstance(worker_storage, optuna.storages.RDBStorage):
        # what Optuna does for a URL string: one trial cache kept across the worker's trials.
        # Without it every load_study wraps the RDBStorage in a fresh cache that reads every trial.
        worker_storage = optuna.storages.get_storage(worker_storage)
    driver = SweepStudy.open(
        url,
        cfg.name,
        OPTIMIZER,
        "bench",
        sampler=cfg.sampler,
        pruner=cfg.pruner,
        seed=cfg.seed,
        trials=cfg.trials,
        epochs=cfg.epochs,
    )
    try:
        for i in range(n):
            # -- driver: Driver.submit
            t0 = time.perf_counter()
            trial = driver.ask()
            tc = sample_trial(trial, OPTIMIZER, cfg)
            t1 = time.perf_counter()
            trial.set_user_attr(Attr.MLFLOW_RUN, uuid.uuid4().hex)
            trial.set_user_attr(Attr.HYPERPARAMETERS, chosen_hyperparameters(tc, cfg))
            t2 = time.perf_counter()
            number = trial.number
            curve = synthetic_curve(tc.optimizer_params, epochs, rng)
            # -- worker: sweep/execution/worker.py run_attempt
            w0 = time.perf_counter()
            study = SweepStudy(
                optuna.load_study(
                    study_name=driver.name, storage=worker_storage, pruner=make_pruner(cfg.pruner, cfg.epochs)
                )
            )  # SweepStudy.load
            earlier = study.record(number)
            live = study.live_trial(number)
            live.set_user_attr(Attr.ATTEMPT, int(earlier.user_attrs.get(Attr.ATTEMPT, 0)) + 1)
            live.set_user_attr(Attr.WORKER, f"bench:{os.getpid()}")
            live.set_user_attr(Attr.NODE_ID, "bench-node")
            live.set_user_attr(Attr.NODE_ADDRESS, "127.0.0.1")
            w1 = time.perf_counter()
            ran, pruned = report_until_pruned(live, curve)
            w2 = time.perf_counter()
            metrics = {
                "epochs": float(ran),
                "seconds": 1.0,
                "train_seconds": 1.0,
                "val_accuracy": curve[ran - 1],
                "best_val_accuracy": max(curve[:ran]),
                "test_accuracy": curve[ran - 1],
            }
            if pruned:
                study.finish(number, Status.PRUNED, f"pruned after epoch {ran}", metrics)
            else:
                study.finish(number, Status.OK, "", metrics, curve[-1])
            w3 = time.perf_counter()
            # -- driver: after collecting it (Driver.tidy_checkpoints, without the deletes)
            a0 = time.perf_counter()
            finished = [
                (r, o) for r in driver.trials() if (o := outcome_of(r)) is not None and Attr.MLFLOW_RUN in r.user_attrs
            ]
            _ = Tally.of(0, (o for _, o in finished)).best_number  # what the driver computes to keep one
            a1 = time.perf_counter()
            for part, seconds in zip(
                DRIVER_PARTS + WORKER_PARTS, (t1 - t0, t2 - t1, a1 - a0, w1 - w0, w2 - w1, w3 - w2)
            ):
                t.parts[part].append(seconds)
            t.epochs.append(ran)
            if (i + 1) % max(1, n // 10) == 0:
                print(
                    f"    {i + 1}/{n}: driver {1000 * t.driver(i):.1f} ms, worker {1000 * t.worker(i):.1f} ms",
                    flush=True,
                )
    finally:
        try:
            optuna.delete_study(study_name=driver.name, storage=open_storage(url))
        except Exception as exc:  # say it, do not hide the measurement's own error
            print(f"    could not delete study {driver.name}: {exc}", file=sys.stderr)
    return t


def run_mlflow(n: int, tmp: Path) -> list[float]:
    """Seconds per ``SweepTracker.trial_run`` (the driver's MLflow call per trial) for n trials."""
    import optuna

    from sweep.core.config import load_config
    from sweep.execution.search import run_params, sample_trial
    from sweep.stores.tracking import SweepTracker

    cfg = load_config("quickstart", [f"optimizers=[{OPTIMIZER}]"], mode="sweep")
    tc = sample_trial(
        optuna.trial.FixedTrial({"lr": 0.01, "one_minus_momentum": 0.1, "schedule": "constant"}),
        OPTIMIZER,
        cfg.replace(schedules=("constant",)),
    )
    params = run_params(tc, {"lr": 0.01, "one_minus_momentum": 0.1, "schedule": "constant"})
    tracker = SweepTracker(f"sqlite:///{tmp / 'mlflow.db'}", "bench-driver-scale", tmp / "artifacts", "bench")
    parent = tracker.parent_run(OPTIMIZER, {"epochs": cfg.epochs})
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        tracker.trial_run(parent, OPTIMIZER, i, params)
        out.append(time.perf_counter() - t0)
        if (i + 1) % max(1, n // 5) == 0:
            print(f"    {i + 1}/{n}: {1000 * out[-1]:.1f} ms", flush=True)
    return out


def pg_answers(url: str) -> str | None:
    """None when the server answers; otherwise why not (one line)."""
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"


def ms(values: list[float]) -> float:
    return round(1000 * statistics.fmean(values), 2) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=None, help="trials in the study (default: by --size)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs per synthetic trial (reports + should_prune)")
    ap.add_argument("--storages", nargs="+", choices=["journal", "postgresql"], default=["journal", "postgresql"])
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--no-mlflow", action="store_true", help="leave out the MLflow trial_run timing")
    ap.add_argument(
        "--cached-worker-storage",
        action="store_true",
        help="the worker's RDB storage wrapped once in Optuna's trial cache (a possible product change), "
        "not per load_study as sweep.stores.studies.open_storage leaves it",
    )
    args = ap.parse_args(argv)
    n = args.trials or SIZES[args.size]

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    load_before = [round(x, 2) for x in os.getloadavg()]
    tmp = Path(tempfile.mkdtemp(prefix="bench-driver-scale-"))
    rows: list[dict[str, Any]] = []
    headlines: list[Headline] = []
    notes: list[str] = []
    results: dict[str, Timings] = {}
    try:
        for storage in args.storages:
            if storage == "journal":
                url = f"journal:///{tmp / 'optuna.journal'}"
            else:
                url = args.pg_url
                why = pg_answers(url)
                if why is not None:
                    notes.append(f"postgresql skipped: {url} does not answer ({why})")
                    print(notes[-1], flush=True)
                    continue
            print(f"{storage}: {n} trials x up to {args.epochs} epochs ...", flush=True)
            started = time.perf_counter()
            results[storage] = run_storage(url, n, args.epochs, cached_worker=args.cached_worker_storage)
            print(f"  {time.perf_counter() - started:.1f} s", flush=True)
        mlflow_times = (
            [] if args.no_mlflow else (print(f"mlflow trial_run: {n} runs ...", flush=True) or run_mlflow(n, tmp))
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    last = windows(n)[-1]
    for storage, t in results.items():
        for lo, hi in windows(n):
            sl = slice(lo - 1, hi)
            driver = [t.driver(i) for i in range(lo - 1, hi)]
            worker = [t.worker(i) for i in range(lo - 1, hi)]
            epochs_run = sum(t.epochs[sl])
            row: dict[str, Any] = {"storage": storage, "trials": f"{lo}-{hi}"}
            row.update({f"{p} ms": ms(t.parts[p][sl]) for p in DRIVER_PARTS})
            row["driver ms"] = ms(driver)
            row["driver p90 ms"] = round(1000 * sorted(driver)[int(0.9 * (len(driver) - 1))], 2)
            row.update({f"worker {p} ms": ms(t.parts[p][sl]) for p in WORKER_PARTS})
            row["report+prune ms/epoch"] = round(1000 * sum(t.parts["epochs"][sl]) / max(1, epochs_run), 2)
            row["worker ms"] = ms(worker)
            row["pruned %"] = round(100 * sum(e < args.epochs for e in t.epochs[sl]) / (hi - lo + 1))
            for s in TRIAL_SECONDS:
                row[f"workers busy @{s:g}s"] = int(s / statistics.fmean(driver))
            rows.append(row)
        driver_last = statistics.fmean(t.driver(i) for i in range(last[0] - 1, last[1]))
        headlines.append(
            Headline(
                f"{storage}: driver ms/trial at trials {last[0]}-{last[1]}",
                round(1000 * driver_last, 2),
                "ms",
                note="ask+sample, 2 set_user_attr, reading the trials after each; no MLflow",
            )
        )
        headlines.append(
            Headline(
                f"{storage}: workers one driver keeps busy with 2-s trials (at n={n})",
                int(2.0 / driver_last),
                "workers",
                note="= 2 s / driver s per trial; the driver saturates past this",
            )
        )
    if mlflow_times:
        for lo, hi in windows(n):
            rows.append(
                {
                    "storage": "mlflow sqlite (SweepTracker.trial_run)",
                    "trials": f"{lo}-{hi}",
                    "driver ms": ms(mlflow_times[lo - 1 : hi]),
                }
            )
        mlflow_last = statistics.fmean(mlflow_times[last[0] - 1 : last[1]])
        for storage, t in results.items():
            total = statistics.fmean(t.driver(i) for i in range(last[0] - 1, last[1])) + mlflow_last
            headlines.append(
                Headline(
                    f"{storage} + MLflow sqlite: workers busy with 2-s trials (at n={n})",
                    int(2.0 / total),
                    "workers",
                    note=f"driver {1000 * total:.1f} ms/trial with its MLflow trial_run",
                )
            )
    load_after = [round(x, 2) for x in os.getloadavg()]
    notes += [
        f"load average before {load_before}, after {load_after} (1/5/15 min)",
        "one process, one trial at a time: no contention between the driver and the workers; with W "
        "workers on the same storage the driver's calls wait behind theirs (storage_contention.py)",
        "workers busy @Ts = T / driver s per trial (mean over the window): the most trials of T seconds "
        "one driver can keep running",
    ]
    result = BenchResult(
        bench="driver_scale",
        size=args.size,
        rows=rows,
        headlines=headlines,
        notes=notes,
        params={
            "trials": n,
            "epochs": args.epochs,
            "optimizer": OPTIMIZER,
            "sampler": "tpe",
            "pruner": "median",
            "storages": list(results),
            "windows": windows(n),
            "cached_worker_storage": args.cached_worker_storage,
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
    )
    finish(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
