"""Optuna's gRPC storage proxy: are P workers on PostgreSQL faster through one proxy than direct?

Optuna (>= 4.2, experimental) can serve any storage over gRPC
(``optuna.storages.run_grpc_proxy_server(storage, host=, port=)``); workers then talk to the
proxy (``optuna.storages.GrpcStorageProxy(host=, port=)``) instead of each holding database
connections, and the proxy's clients cache finished trials. Measured, for PostgreSQL only (the
proxy does not serve the journal storage: optuna issue #6084):

  direct  each worker process opens ``sweep.stores.studies.open_storage(PG_URL)``, as the product does;
  proxy   one server process serves ``optuna.storages.get_storage(PG_URL)`` (Optuna's cached
          RDB storage, as its documentation asks) on 127.0.0.1 with its default 10-thread pool;
          each worker opens ``GrpcStorageProxy``.

P worker processes (spawn) load ONE study created beforehand (unique name, deleted at the end)
with the product's median pruner, start together on a barrier, and each run T trials of what a
sweep worker does with the study: ``ask``, then per epoch ``report`` + ``should_prune`` (the
decision ignored, so both sides do the same work), then ``tell``. Measured: wall seconds from
the barrier to the last worker's end, trials/s, and the p50/p95 of report+should_prune. The
proxy's start-up is not timed. The two modes alternate order between repeats; the table shows
medians over repeats.

Sizes: ci = P in (4, 8), T=8, E=6, 1 repeat; full = P in (4, 8, 16), T=20, E=10, 3 repeats.

Usage: .venv/bin/python bench/grpc_proxy.py [--size ci|full] [--json PATH] [--procs 4 8] [--trials T]
           [--epochs E] [--repeats R] [--pg-url URL]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import socket
import statistics
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite import BenchResult, Headline, Size, finish, parser  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MODES = ("direct", "proxy")
SIZES: dict[Size, dict[str, Any]] = {
    Size.CI: {"procs": (4, 8), "trials": 8, "epochs": 6, "repeats": 1},
    Size.FULL: {"procs": (4, 8, 16), "trials": 20, "epochs": 10, "repeats": 3},
}


def quiet() -> None:
    """The proxy's ExperimentalWarning, once per process, says nothing the notes do not."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def serve(url: str, port: int) -> None:
    """The proxy process: Optuna's cached storage for the URL, served until terminated."""
    import optuna

    quiet()
    optuna.storages.run_grpc_proxy_server(optuna.storages.get_storage(url), host="127.0.0.1", port=port)


def storage_for(mode: str, url: str, port: int):
    import optuna

    if mode == "proxy":
        storage = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        storage.wait_server_ready(timeout=60)
        return storage
    from sweep.stores.studies import open_storage

    return open_storage(url)


def one_worker(mode: str, url: str, port: int, name: str, trials: int, epochs: int, seed: int, barrier, out) -> None:
    """One sweep worker's share: (start, end, latencies, errors) onto ``out``."""
    import optuna

    from sweep.stores.studies import make_pruner

    quiet()
    errors: list[str] = []
    latencies: list[float] = []
    study = None
    try:
        study = optuna.load_study(
            study_name=name, storage=storage_for(mode, url, port), pruner=make_pruner("median", epochs)
        )
    except Exception as exc:  # still wait on the barrier so the others are not stuck
        errors.append(f"{type(exc).__name__}: {exc}"[:200])
    barrier.wait(timeout=300)
    start = time.monotonic()
    rng = random.Random(seed)
    for _ in range(trials if study is not None else 0):
        try:
            trial = study.ask()
            final = rng.uniform(0.5, 0.99)
            for step in range(1, epochs + 1):
                t0 = time.perf_counter()
                trial.report(final * (1 - 0.5**step), step)
                trial.should_prune()
                latencies.append(time.perf_counter() - t0)
            study.tell(trial, final)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
    out.put((start, time.monotonic(), latencies, errors))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cell(ctx, mode: str, url: str, port: int, procs: int, trials: int, epochs: int) -> dict[str, Any]:
    """One run of P workers on a fresh study; the study is deleted afterwards."""
    import optuna

    from sweep.stores.studies import DIRECTION, open_storage

    name = f"bench-grpc-proxy-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_storage(url), direction=DIRECTION)
    try:
        barrier, out = ctx.Barrier(procs), ctx.Queue()
        workers = [
            ctx.Process(target=one_worker, args=(mode, url, port, name, trials, epochs, i, barrier, out))
            for i in range(procs)
        ]
        for w in workers:
            w.start()
        results = [out.get(timeout=900) for _ in workers]
        for w in workers:
            w.join(timeout=60)
        wall = max(r[1] for r in results) - min(r[0] for r in results)
        lat = sorted(x for r in results for x in r[2])
        errors = [e for r in results for e in r[3]]
        told = len(
            optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
            )
        )
        return {
            "wall": wall,
            "trials_per_s": told / wall if wall > 0 else float("nan"),
            "told": told,
            "p50_ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
            "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
            "errors": errors,
        }
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(url))


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=None)
    ap.add_argument("--trials", type=int, default=None, help="trials per worker")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--pg-url", default=PG_URL)
    args = ap.parse_args(argv)
    size = SIZES[args.size]
    procs = tuple(args.procs or size["procs"])
    trials, epochs = args.trials or size["trials"], args.epochs or size["epochs"]
    repeats = args.repeats or size["repeats"]

    import optuna

    quiet()
    load_before = [round(x, 2) for x in os.getloadavg()]
    ctx = mp.get_context("spawn")
    port = free_port()
    server = ctx.Process(target=serve, args=(args.pg_url, port), daemon=True)
    server.start()
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    try:
        probe = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        probe.wait_server_ready(timeout=60)
        for rep in range(repeats):
            for p in procs:
                for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                    r = run_cell(ctx, mode, args.pg_url, port, p, trials, epochs)
                    cells.setdefault((p, mode), []).append(r)
                    print(
                        f"  repeat {rep + 1} P={p} {mode:6} {r['wall']:6.2f} s {r['trials_per_s']:6.1f} trials/s "
                        f"p50 {r['p50_ms']:.1f} ms p95 {r['p95_ms']:.1f} ms told {r['told']}/{p * trials} "
                        f"errors {len(r['errors'])}",
                        flush=True,
                    )
    finally:
        server.terminate()  # the process started above, by its handle
        server.join(timeout=30)

    rows: list[dict[str, Any]] = []
    speedups: dict[int, float] = {}
    for p in procs:
        med = {}
        for mode in MODES:
            rs = cells[(p, mode)]
            med[mode] = {k: statistics.median(r[k] for r in rs) for k in ("wall", "trials_per_s", "p50_ms", "p95_ms")}
            rows.append(
                {
                    "P": p,
                    "mode": mode,
                    "wall s": round(med[mode]["wall"], 2),
                    "trials/s": round(med[mode]["trials_per_s"], 1),
                    "report+prune p50 ms": round(med[mode]["p50_ms"], 1),
                    "report+prune p95 ms": round(med[mode]["p95_ms"], 1),
                    "told": f"{min(r['told'] for r in rs)}/{p * trials}",
                    "errors": sum(len(r["errors"]) for r in rs),
                    "walls": ", ".join(f"{r['wall']:.2f}" for r in rs),
                }
            )
        speedups[p] = round(med["proxy"]["trials_per_s"] / med["direct"]["trials_per_s"], 2)
        rows[-1]["proxy / direct trials/s"] = speedups[p]
    headlines = [
        Headline(f"P={p}: proxy / direct trials/s on PostgreSQL", s, "x", note="> 1: the proxy is faster")
        for p, s in speedups.items()
    ]
    errors = sorted({e for rs in cells.values() for r in rs for e in r["errors"]})
    load_after = [round(x, 2) for x in os.getloadavg()]
    notes = [
        f"load average before {load_before}, after {load_after} (1/5/15 min)",
        "the proxy is experimental in Optuna (since 4.2) and does not serve the journal storage",
    ]
    if errors:
        notes.append("errors: " + "; ".join(errors[:5]))
    finish(
        BenchResult(
            bench="grpc_proxy",
            size=args.size,
            rows=rows,
            headlines=headlines,
            notes=notes,
            params={
                "procs": list(procs),
                "trials": trials,
                "epochs": epochs,
                "repeats": repeats,
                "pg_url": args.pg_url,
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
        ),
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
