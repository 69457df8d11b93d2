"""The benchmark suite, one command: ``.venv/bin/python -m bench [--size ci|full] [--only NAME ...]``.

Runs each bench below in its own fresh process, one after another (never side by side: on a
shared machine they would measure each other), each writing ``bench/results/<name>.json``; then
prints every headline with its target. ``--size ci`` (the default) takes a few minutes on 2 CPU
cores; ``--size full`` gives the README's figures (a GPU machine, or a long CPU run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.suite import RESULTS_DIR, ROOT, Size, headline_line, parser


@dataclass(frozen=True)
class Bench:
    name: str  # bench/<name>.py
    what: str  # one line for --list
    in_ci: bool = True  # part of `--size ci` unless --only names it


BENCHES = [
    Bench("trial_loop", "the trial loop's images/s against a bare PyTorch loop (target >= 0.97)"),
    Bench("startup", "command to first trial running, and a 1-trial sweep, against the import+ray.init floor"),
    Bench("utilization", "W workers, K fixed trials: training seconds / (W x wall), overheads broken out"),
    Bench("short_trials", "the quick start's 42 short trials: sweep wall time against Ray start + training / workers"),
    Bench("benchmark_cost", "a benchmark's wall time against the same trials run as separate sweeps"),
    Bench("pruning", "compute spent and best accuracy under median, asha, hyperband and no pruning"),
    Bench("driver_scale", "driver cost per trial as a study grows to 1,000 trials (journal vs PostgreSQL)"),
    Bench("storage_contention", "which Optuna storage for many workers on one machine"),
    Bench("mlflow_logging", "one log_batch per epoch vs one log_metric per metric"),
    Bench("packing", "trials/hour with pack = 1..32 (trials trained as one fused model), and whole sweeps"),
    Bench("tune_baseline", "the product against the same sweep wired by hand with Ray Tune", in_ci=False),
    Bench("grpc_proxy", "P workers on PostgreSQL, direct or through Optuna's gRPC storage proxy", in_ci=False),
]


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], help="run these benches only")
    ap.add_argument("--list", action="store_true", help="list the benches and exit")
    args = ap.parse_args(argv)
    if args.list:
        for b in BENCHES:
            print(f"{b.name:20} {b.what}{'' if b.in_ci else ' (not in --size ci unless --only)'}")
        return 0
    chosen = [b for b in BENCHES if (b.name in args.only if args.only else (b.in_ci or args.size is Size.FULL))]
    out_dir = args.json.parent if args.json else RESULTS_DIR
    failed, summary = [], []
    for b in chosen:
        path = out_dir / f"{b.name}.json"
        path.unlink(missing_ok=True)  # a bench that writes nothing must not be read from an earlier run
        print(f"\n=== {b.name}: {b.what}", flush=True)
        started = time.perf_counter()
        rc = subprocess.call(
            [sys.executable, str(ROOT / "bench" / f"{b.name}.py"), "--size", args.size.value, "--json", str(path)],
            cwd=ROOT,
        )
        seconds = time.perf_counter() - started
        if rc != 0 or not path.exists():
            failed.append(b.name)
            summary.append(f"{b.name}: FAILED (exit {rc}) after {seconds:.0f} s")
            continue
        result = json.loads(path.read_text())
        summary.append(f"{b.name} ({seconds:.0f} s):")
        summary += [f"  {headline_line(h)}" for h in result["headlines"]]
    print("\n=== summary")
    print("\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
