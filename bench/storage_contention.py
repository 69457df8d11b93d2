"""Which Optuna storage should be the embedded default when many workers share one machine?

For each backend, P worker processes (spawn context, reused across runs) start together on a
barrier and each do what a sweep worker does (sweep/execution/worker.py), T times, against ONE shared study
created beforehand:

    trial = study.ask()
    for step in range(E):
        trial.report(value, step); trial.should_prune()     # MedianPruner, as in the product
    study.tell(trial, value)

The prune decision is ignored so that every backend does exactly the same amount of work.
Every exception is caught and counted ('database is locked' separately); nothing crashes.

Backends:
  journal      sweep.stores.studies.open_storage("journal:///<tmp>/optuna.journal")   (JournalFileBackend)
  sqlite-wal   sweep.stores.studies.open_storage("sqlite:///<tmp>/optuna.db")        (WAL + 60 s busy timeout)
  sqlite-plain optuna.storages.RDBStorage("sqlite:///<tmp>/plain.db")         (rollback journal, 5 s default)
  postgres     sweep.stores.studies.open_storage(--pg-url); unique study name, deleted at the end

Part of the suite (``python -m bench``): ``--size ci`` (P=4, T=5, 1 repeat: well under a minute)
or ``--size full`` (P=8 and 16, T=10, 3 repeats: the README's table) sets what the options below
leave unset; the headline per P is the journal's trials/s over the best other backend's.

Usage:  .venv/bin/python bench/storage_contention.py [--size ci|full] [--json PATH]
            [--procs 8 16] [--trials 10] [--epochs 10] [--repeats 3]
"""

from __future__ import annotations

import multiprocessing as mp
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: import `bench`, `sweep`

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from bench.suite import BenchResult, Headline, Size, finish, parser  # noqa: E402
from sweep.stores.studies import DIRECTION, make_pruner, open_storage  # noqa: E402

BACKENDS = ["journal", "sqlite-wal", "sqlite-plain", "postgres"]
# What --size sets when the option is not given: procs, trials, epochs, repeats.
SIZES = {
    Size.CI: {"procs": [4], "trials": 5, "epochs": 10, "repeats": 1},
    Size.FULL: {"procs": [8, 16], "trials": 10, "epochs": 10, "repeats": 3},
}
LOCKED = "database is locked"
optuna.logging.set_verbosity(optuna.logging.ERROR)


def make_storage(backend: str, location: str) -> optuna.storages.BaseStorage:
    """`location` is a directory for the file backends and the URL for postgres."""
    if backend == "journal":
        return open_storage(f"journal:///{Path(location, 'optuna.journal')}")
    if backend == "sqlite-wal":
        return open_storage(f"sqlite:///{Path(location, 'optuna.db')}")
    if backend == "sqlite-plain":
        return optuna.storages.RDBStorage(f"sqlite:///{Path(location, 'plain.db')}")
    if backend == "postgres":
        return open_storage(location)
    raise ValueError(backend)


def one_worker(backend, location, study_name, trials, epochs, seed, barrier):
    """One sweep worker's share of a run. Returns (told trials, latencies, errors)."""
    errors: list[str] = []
    latencies: list[float] = []
    told = 0

    def record(exc: BaseException) -> None:
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")

    study = None
    try:
        study = optuna.load_study(
            study_name=study_name, storage=make_storage(backend, location), pruner=make_pruner("median", epochs)
        )
    except Exception as exc:  # still wait on the barrier so the others are not stuck
        record(exc)
    barrier.wait(timeout=300)
    rng = random.Random(seed)
    for _ in range(trials if study is not None else 0):
        try:
            trial = study.ask()
        except Exception as exc:
            record(exc)
            continue
        value = rng.random()
        for step in range(epochs):
            value = min(1.0, value + rng.random() * 0.05)
            t0 = time.perf_counter()
            try:
                trial.report(value, step)
                trial.should_prune()  # decision ignored: same work on every backend
            except Exception as exc:
                record(exc)
            latencies.append(time.perf_counter() - t0)
        try:
            study.tell(trial, value)
            told += 1
        except Exception as exc:
            record(exc)
    return told, latencies, errors


def worker_loop(tasks, barrier, results):
    """A worker process, reused for every backend and repeat (spawning P interpreters that import
    optuna costs more than a whole run on 2 cores). Fresh storage files/study names every run."""
    while (task := tasks.get()) is not None:
        try:
            results.put(one_worker(*task, barrier))
        except Exception as exc:  # e.g. a broken barrier: report it, keep the pool alive
            results.put((0, [], [f"{type(exc).__name__}: {exc}"]))


class WorkerPool:
    """P spawned processes that start each run together on a barrier with this process."""

    def __init__(self, procs: int):
        ctx = mp.get_context("spawn")
        self.procs = procs
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.barrier = ctx.Barrier(procs + 1)
        self.processes = [
            ctx.Process(target=worker_loop, args=(self.tasks, self.barrier, self.results)) for _ in range(procs)
        ]
        for p in self.processes:
            p.start()

    def run(self, backend, location, study_name, trials, epochs):
        """Returns (wall seconds from the common start to the last worker's result, results)."""
        for i in range(self.procs):  # each worker takes exactly one task, then blocks on the barrier
            self.tasks.put((backend, location, study_name, trials, epochs, 1000 * self.procs + i))
        self.barrier.wait(timeout=300)  # every worker has loaded the study
        t0 = time.perf_counter()
        outs = [self.results.get(timeout=1800) for _ in range(self.procs)]
        return time.perf_counter() - t0, outs

    def close(self):
        for _ in self.processes:
            self.tasks.put(None)
        for p in self.processes:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def run_backend(pool: WorkerPool, backend: str, location: str, trials: int, epochs: int) -> dict:
    """Create the study, run the pool's workers against it, check what the storage holds."""
    name = f"bench-contention-{uuid.uuid4().hex[:12]}"
    storage = make_storage(backend, location)
    optuna.create_study(study_name=name, storage=storage, direction=DIRECTION)
    try:
        wall, outs = pool.run(backend, location, name, trials, epochs)
        mode = ""
        if backend.startswith("sqlite"):  # show that "plain" really is the rollback journal
            db = Path(location, "optuna.db" if backend == "sqlite-wal" else "plain.db")
            with sqlite3.connect(db) as conn:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        states = {}
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
    finally:
        if backend == "postgres":
            optuna.delete_study(study_name=name, storage=storage)
    latencies = [x for o in outs for x in o[1]]
    errors = [e for o in outs for e in o[2]]
    told = sum(o[0] for o in outs)
    return {
        "told": told,
        "wall": wall,
        "rate": told / wall,
        "errors": errors,
        "locked": sum(LOCKED in e for e in errors),
        "p50": float(np.percentile(latencies, 50)) * 1000 if latencies else float("nan"),
        "p95": float(np.percentile(latencies, 95)) * 1000 if latencies else float("nan"),
        "states": states,
        "expected": pool.procs * trials,
        "mode": mode,
    }


def postgres_available(url: str) -> str | None:
    """None if usable, else the reason."""
    try:
        optuna.study.get_all_study_names(optuna.storages.RDBStorage(url))
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def measure(pool: WorkerPool, backend: str, args) -> dict:
    """`args.repeats` runs of one backend on fresh files / a fresh study; medians of the timings."""
    runs = []
    for _ in range(args.repeats):
        tmp = tempfile.mkdtemp(prefix=f"bench-{backend}-")
        try:
            location = args.pg_url if backend == "postgres" else tmp
            runs.append(run_backend(pool, backend, location, args.trials, args.epochs))
        except Exception:  # a backend that cannot even run is a result, not a crash
            traceback.print_exc()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not runs:
        return {"procs": pool.procs, "backend": backend, "failed": True}
    return {
        "procs": pool.procs,
        "backend": backend,
        "failed": False,
        "wall": statistics.median(x["wall"] for x in runs),
        "rate": statistics.median(x["rate"] for x in runs),
        "p50": statistics.median(x["p50"] for x in runs),
        "p95": statistics.median(x["p95"] for x in runs),
        "errors": sum(len(x["errors"]) for x in runs),
        "locked": sum(x["locked"] for x in runs),
        "told": sum(x["told"] for x in runs),
        "expected": sum(x["expected"] for x in runs),
        "states": runs[-1]["states"],
        "mode": runs[-1]["mode"],
        "samples": sorted({e for x in runs for e in x["errors"]}),
    }


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument(
        "--procs",
        type=int,
        nargs="+",
        default=None,
        help="worker processes (P); several values run one after the other, e.g. 8 16",
    )
    ap.add_argument("--trials", type=int, default=None, help="trials per worker (T)")
    ap.add_argument("--epochs", type=int, default=None, help="report+should_prune per trial (E)")
    ap.add_argument("--repeats", type=int, default=None, help="repeat each cell, report medians")
    ap.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    for name, value in SIZES[args.size].items():  # what --size sets where the option was not given
        if getattr(args, name) is None:
            setattr(args, name, value)

    backends = list(args.backends)
    pg_down = postgres_available(args.pg_url) if "postgres" in backends else None
    if pg_down:
        print(f"PostgreSQL unavailable at {args.pg_url} ({pg_down}); skipping it.")
        backends.remove("postgres")

    print(
        f"optuna {optuna.__version__}, {args.trials} trials x {args.epochs} report+should_prune "
        f"per worker, repeats={args.repeats}\n"
    )
    rows = []
    for procs in args.procs:
        pool = WorkerPool(procs)
        try:
            for backend in backends:
                rows.append(measure(pool, backend, args))
                r = rows[-1]
                if not r["failed"]:
                    print(
                        f"  P={procs:<3} {backend:<12} wall {r['wall']:.2f}s  errors {r['errors']}  "
                        f"states {r['states']} {r['mode']}",
                        flush=True,
                    )
        finally:
            pool.close()

    print(
        "\n| P | backend | errors (locked) | trials told | wall s | trials/s | x slower than best "
        "| report+prune p50 ms | p95 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for procs in args.procs:
        cells = [r for r in rows if r["procs"] == procs and not r["failed"]]
        best = max((r["rate"] for r in cells), default=float("nan"))
        for r in (x for x in rows if x["procs"] == procs):
            if r["failed"]:
                print(f"| {procs} | {r['backend']} | failed to run | | | | | | |")
                continue
            print(
                f"| {procs} | {r['backend']} | {r['errors']} ({r['locked']}) | {r['told']}/{r['expected']} "
                f"| {r['wall']:.2f} | {r['rate']:.1f} | {best / r['rate']:.2f}x | {r['p50']:.1f} "
                f"| {r['p95']:.1f} |"
            )
    if pg_down:
        print(f"| - | postgres | unavailable: {pg_down} | | | | | | |")

    for r in rows:
        if not r["failed"] and r["samples"]:
            print(f"\nerrors, P={r['procs']} {r['backend']}:")
            for e in r["samples"][:5]:
                print(f"  {e}")

    ok = [r for r in rows if not r["failed"]]
    if ok:
        top = max(args.procs)
        clean = [r for r in ok if r["procs"] == top and r["errors"] == 0]
        winner = max(clean, key=lambda r: r["rate"]) if clean else None
        locked = sorted({r["backend"] for r in ok if r["locked"]})
        print(
            "\nConclusion: "
            + (
                f"at P={top} the fastest error-free backend is {winner['backend']} ({winner['rate']:.1f} trials/s)"
                if winner
                else f"no backend was error-free at P={top}"
            )
            + "; 'database is locked' from: "
            + (", ".join(locked) if locked else "none")
            + "."
        )
    finish(suite_result(args, rows, pg_down), args.json)


def suite_result(args, rows: list[dict], pg_down: str | None) -> BenchResult:
    """The rows as the suite records them, and per P the journal's trials/s over the best other's."""
    table, headlines = [], []
    for procs in args.procs:
        cells = [r for r in rows if r["procs"] == procs and not r["failed"]]
        best = max((r["rate"] for r in cells), default=float("nan"))
        for r in (x for x in rows if x["procs"] == procs):
            if r["failed"]:
                table.append({"P": procs, "backend": r["backend"], "failed": True})
                continue
            table.append(
                {
                    "P": procs,
                    "backend": r["backend"],
                    "errors": r["errors"],
                    "locked": r["locked"],
                    "trials told": r["told"],
                    "expected": r["expected"],
                    "wall s": r["wall"],
                    "trials/s": r["rate"],
                    "x slower than best": best / r["rate"],
                    "report+prune p50 ms": r["p50"],
                    "p95 ms": r["p95"],
                    "journal_mode": r["mode"],
                }
            )
        journal = next((r["rate"] for r in cells if r["backend"] == "journal"), None)
        others = [r["rate"] for r in cells if r["backend"] != "journal"]
        value = journal / max(others) if journal is not None and others else None
        headlines.append(
            Headline(
                f"journal trials/s / best other backend's, P={procs}",
                value,
                "x",
                ">= 1",
                None if value is None else value >= 1,
                "journal not measured" if journal is None else "" if others else "no other backend measured",
            )
        )
    errors = sum(r.get("errors", 0) for r in rows)
    notes = [
        f"T={args.trials} trials x E={args.epochs} report+should_prune per worker, medians of "
        f"{args.repeats} repeat(s); {errors} error(s) in all, "
        f"{sum(r.get('locked', 0) for r in rows)} 'database is locked'"
    ]
    if pg_down:
        notes.append(f"PostgreSQL unavailable at {args.pg_url}: not measured ({pg_down})")
    params = {
        "procs": args.procs,
        "trials": args.trials,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "backends": args.backends,
        "optuna": optuna.__version__,
    }
    return BenchResult("storage_contention", args.size, table, headlines, notes, params)


if __name__ == "__main__":
    main()
