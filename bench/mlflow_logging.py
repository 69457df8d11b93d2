"""Why the product logs one MlflowClient.log_batch per epoch instead of one log_metric per metric.

Ray Tune's MLflowLoggerCallback (ray/air/_internal/mlflow.py, `log_metrics`) calls
`client.log_metric(run_id, key, value, step)` once per metric per result. sweep/stores/tracking.py's
`log_epoch` sends the same epoch as ONE `client.log_batch(run_id, metrics=[...])`.

For each tracking store, R runs x E epochs x M metrics are logged both ways:
  (a) per-metric: one client.log_metric(...) per metric       -> R*E*M calls
  (b) per-epoch:  one client.log_batch(..., metrics=[...])     -> R*E calls
Runs are created (and the store's tables exist) before the clock starts; only the metric logging
is timed. Afterwards every run's get_metric_history is checked: both ways must have stored
exactly R*E*M points, otherwise the comparison is not honest and the script says so.

Stores:
  sqlite  MlflowClient("sqlite:///<tmp>/mlflow.db") in this process (what a sweep uses by default)
  server  `mlflow server --backend-store-uri sqlite:///<tmp>/srv.db` on 127.0.0.1:<free port>,
          reached over HTTP (--server; --size full includes it)

Part of the suite (``python -m bench``): ``--size`` sets what the options below leave unset,
``ci`` R=10 x E=5 x M=7 with 1 repeat on SQLite only (the server's start alone took 25-100 s on
2 busy cores; ``--server`` adds it), ``full`` R=20 x E=10 x M=7 with 3 repeats and the server (the
README's table). The headline per store is the (a)/(b) time ratio: above 1, one log_batch per
epoch is the faster way.

Usage:  .venv/bin/python bench/mlflow_logging.py [--size ci|full] [--json PATH]
            [--runs 20] [--epochs 10] [--metrics 7] [--repeats 1] [--server | --no-server]
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: import `bench`

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric  # noqa: E402

from bench.suite import BenchResult, Headline, Size, finish, parser  # noqa: E402

METRICS = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds", "images_per_second"]
logging.getLogger("mlflow").setLevel(logging.ERROR)
# What --size sets when the option is not given.
SIZES = {
    Size.CI: {"runs": 10, "epochs": 5, "metrics": 7, "repeats": 1, "server": False},
    Size.FULL: {"runs": 20, "epochs": 10, "metrics": 7, "repeats": 3, "server": True},
}


def metric_names(m: int) -> list[str]:
    return (METRICS + [f"extra_{i}" for i in range(max(0, m - len(METRICS)))])[:m]


def log_per_metric(client, run_id, epoch_values, step):
    ts = int(time.time() * 1000)
    for key, value in epoch_values.items():
        client.log_metric(run_id, key, value, timestamp=ts, step=step)


def log_per_epoch(client, run_id, epoch_values, step):
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in epoch_values.items()])


WAYS = {
    "log_metric": (log_per_metric, "(a) log_metric per metric"),
    "log_batch": (log_per_epoch, "(b) log_batch per epoch"),
}


def one_way(client, experiment_id, way, runs, epochs, keys, seed) -> tuple[float, int]:
    """Time logging R x E x M points one way; return (seconds, points found in the store)."""
    rng = random.Random(seed)
    run_ids = [client.create_run(experiment_id, run_name=f"{way}-{i}").info.run_id for i in range(runs)]
    values = [[{k: rng.random() for k in keys} for _ in range(epochs)] for _ in run_ids]
    log = WAYS[way][0]
    t0 = time.perf_counter()
    for run_id, per_epoch in zip(run_ids, values):
        for step, epoch_values in enumerate(per_epoch):
            log(client, run_id, epoch_values, step)
    seconds = time.perf_counter() - t0
    with ThreadPoolExecutor(8) as pool:  # untimed check; in parallel, as it is slow over HTTP
        stored = sum(
            pool.map(
                lambda rk: len(client.get_metric_history(*rk)), [(run_id, key) for run_id in run_ids for key in keys]
            )
        )
        # update_run, not set_terminated: the latter prints two run URLs per run over HTTP
        list(pool.map(lambda run_id: client.update_run(run_id, status="FINISHED"), run_ids))
    return seconds, stored


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp / 'srv.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--artifacts-destination",
        str(tmp / "srv-artifacts"),
    ]  # not ./mlartifacts in the repo
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with {proc.returncode}:\n" + (tmp / "server.log").read_text()[-2000:]
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (uvicorn workers and job consumers included)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def bench_store(name, uri, tmp, args) -> dict:
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(  # creates the tables: not timed
        f"bench-{uuid.uuid4().hex[:8]}", artifact_location=(tmp / f"{name}-artifacts").as_uri()
    )
    keys = metric_names(args.metrics)
    expected = args.runs * args.epochs * len(keys)
    seconds: dict[str, list[float]] = {w: [] for w in WAYS}
    stored: dict[str, set[int]] = {w: set() for w in WAYS}
    for rep in range(args.repeats):
        order = list(WAYS) if rep % 2 == 0 else list(WAYS)[::-1]  # alternate: no order bias
        for way in order:
            s, n = one_way(client, experiment_id, way, args.runs, args.epochs, keys, seed=rep)
            seconds[way].append(s)
            stored[way].add(n)
            print(f"  {name:<7} repeat {rep + 1}: {WAYS[way][1]:<27} {s:7.2f}s  stored {n}/{expected}", flush=True)
    return {
        "store": name,
        "expected": expected,
        "stored": stored,
        "a": statistics.median(seconds["log_metric"]),
        "b": statistics.median(seconds["log_batch"]),
        "calls_a": expected,
        "calls_b": args.runs * args.epochs,
    }


def main() -> None:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=None, help="runs (R)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (E)")
    ap.add_argument("--metrics", type=int, default=None, help="metrics per epoch (M)")
    ap.add_argument("--repeats", type=int, default=None, help="repeat both ways, report medians")
    ap.add_argument(
        "--server",
        dest="server",
        action="store_true",
        default=None,
        help="also measure an `mlflow server` over HTTP (default at --size full)",
    )
    ap.add_argument(
        "--no-server",
        dest="server",
        action="store_false",
        help="skip the `mlflow server` over HTTP store (default at --size ci)",
    )
    args = ap.parse_args()
    for name, value in SIZES[args.size].items():  # what --size sets where the option was not given
        if getattr(args, name) is None:
            setattr(args, name, value)

    import mlflow

    print(
        f"mlflow {mlflow.__version__}: {args.runs} runs x {args.epochs} epochs x {args.metrics} metrics, "
        f"repeats={args.repeats}\n"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    rows, notes = [], []
    try:
        rows.append(bench_store("sqlite", f"sqlite:///{tmp / 'mlflow.db'}", tmp, args))
        if args.server:
            proc = None
            try:
                t0 = time.perf_counter()
                proc, url = start_server(tmp)
                print(f"  server  healthy after {time.perf_counter() - t0:.1f}s at {url}", flush=True)
                rows.append(bench_store("server", url, tmp, args))
            except Exception as exc:
                notes.append(f"mlflow server: not measured ({type(exc).__name__}: {exc})")
            finally:
                if proc is not None:
                    stop_server(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        "\n| store | (a) log_metric s | (b) log_batch s | ratio (a)/(b) | calls (a) / (b) "
        "| ms per call (a) / (b) | points stored (a) / (b) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        sa, sb = sorted(r["stored"]["log_metric"]), sorted(r["stored"]["log_batch"])
        print(
            f"| {r['store']} | {r['a']:.2f} | {r['b']:.2f} | {r['a'] / r['b']:.1f}x "
            f"| {r['calls_a']} / {r['calls_b']} | {1000 * r['a'] / r['calls_a']:.1f} / "
            f"{1000 * r['b'] / r['calls_b']:.1f} | {'/'.join(map(str, sa))} / {'/'.join(map(str, sb))} |"
        )
    for note in notes:
        print(f"\n{note}")
    honest = all(r["stored"]["log_metric"] == r["stored"]["log_batch"] == {r["expected"]} for r in rows)
    print(
        "\nCheck: "
        + (
            "both ways stored exactly R*E*M points in every store and repeat."
            if honest
            else "MISMATCH in stored metric points: do not trust the ratio."
        )
    )
    if rows:
        print(
            "Conclusion: one log_batch per epoch is "
            + ", ".join(f"{r['a'] / r['b']:.1f}x faster on {r['store']}" for r in rows)
            + " than one log_metric per metric, for the same stored points."
        )
    finish(suite_result(args, rows, notes, honest), args.json)


def suite_result(args, rows: list[dict], notes: list[str], honest: bool) -> BenchResult:
    """The table as the suite records it, and per store the (a)/(b) ratio (met: log_batch faster,
    with the same points stored both ways)."""
    table, headlines = [], []
    for r in rows:
        ratio = r["a"] / r["b"]
        same = r["stored"]["log_metric"] == r["stored"]["log_batch"] == {r["expected"]}
        table.append(
            {
                "store": r["store"],
                "(a) log_metric s": r["a"],
                "(b) log_batch s": r["b"],
                "ratio (a)/(b)": ratio,
                "calls (a)": r["calls_a"],
                "calls (b)": r["calls_b"],
                "ms per call (a)": 1000 * r["a"] / r["calls_a"],
                "ms per call (b)": 1000 * r["b"] / r["calls_b"],
                "points stored (a)": sorted(r["stored"]["log_metric"]),
                "points stored (b)": sorted(r["stored"]["log_batch"]),
                "expected": r["expected"],
            }
        )
        headlines.append(
            Headline(
                f"log_metric / log_batch time, {r['store']}",
                ratio,
                "x",
                "> 1",
                ratio > 1 and same,
                "" if same else "stored points differ: not comparable",
            )
        )
    notes = [
        f"R={args.runs} runs x E={args.epochs} epochs x M={args.metrics} metrics, medians of {args.repeats} "
        f"repeat(s); " + ("same points stored both ways" if honest else "MISMATCH in stored points")
    ] + notes
    if not args.server:
        notes.append("the tracking server was not measured (--size ci skips it; --server adds it)")
    params = {
        "runs": args.runs,
        "epochs": args.epochs,
        "metrics": args.metrics,
        "repeats": args.repeats,
        "server": args.server,
    }
    return BenchResult("mlflow_logging", args.size, table, headlines, notes, params)


if __name__ == "__main__":
    main()
