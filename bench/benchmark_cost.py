"""What a benchmark costs against the same trials run as separate sweeps.

A benchmark (``sweep run CONFIG`` with a ``benchmark:`` section) runs its child sweeps in one
process: one interpreter, one Ray start, each workload's data loaded once per child, one report.
The alternative a user has without it is one ``sweep run`` per (workload, study) with the child's
settings, then adding up the results by hand. Both run here side by side, the same trials (the
child configs are the benchmark's own, so every trial trains the same thing), alternating so
that a burst of load on a shared machine falls on both. Reported: each wall time, their ratio,
and the trials' total training seconds (the same work on both sides).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite import BenchResult, Headline, Size, finish, median, parser  # noqa: E402

VENV_BIN = Path(sys.executable).parent
REPEATS = {Size.CI: 1, Size.FULL: 3}
CONFIG = {  # two digits workloads x 2 studies: 4 child sweeps of 2 optimizers x 2 trials
    "name": "cost",
    "benchmark": {
        "ruleset": "external",
        "studies": 2,
        "workloads": {
            "cnn": {"dataset": "digits", "model": "simple_cnn", "epochs": 2, "batch_size": 64, "target": 0.5},
            "lenet": {"dataset": "digits", "model": "lenet", "epochs": 2, "batch_size": 32, "target": 0.2},
        },
    },
    "optimizers": ["adam", "sgd"],
    "trials": 2,
    "workers": 2,
}
# the child sweep keys that differ from a plain `sweep run` of the same shared keys
CHILD_KEYS = (
    "dataset",
    "model",
    "epochs",
    "batch_size",
    "target_accuracy",
    "sampler",
    "pruner",
    "reeval_seeds",
    "seed",
)


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _separately(config: Path, out: Path) -> float:
    """One `sweep run` per child, with the child's own values: the user's alternative."""
    from sweep.core.benchmark import load_benchmark

    bench, _ = load_benchmark(str(config), [f"output_dir={out / 'bench'}"])
    total = 0.0
    for child in bench.children:
        values = {k: getattr(child.config, k) for k in CHILD_KEYS if getattr(child.config, k) is not None}
        words = [f"{k}={v}" for k, v in values.items()]
        optimizers = f"optimizers=[{','.join(child.config.optimizers)}]"
        total += _timed(
            [
                str(VENV_BIN / "sweep"),
                "run",
                "quickstart",
                *words,
                optimizers,
                f"trials={child.config.trials}",
                "workers=2",
                "schedules=[constant]",
                "report_figures=false",  # as a benchmark's children
                f"name={child.config.name}",
                f"output_dir={out / 'separate'}",
            ]
        )
    return total


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    rows = []
    for repeat in range(REPEATS[args.size]):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            config = out / "cost.yaml"
            config.write_text(yaml.safe_dump(CONFIG))
            together = _timed([str(VENV_BIN / "sweep"), "run", str(config), f"output_dir={out / 'bench'}"])
            apart = _separately(config, out)
            rows.append({"repeat": repeat, "benchmark_s": round(together, 1), "separate_sweeps_s": round(apart, 1)})
            print(rows[-1], flush=True)
            shutil.rmtree(out / "separate", ignore_errors=True)
    together, apart = median([r["benchmark_s"] for r in rows]), median([r["separate_sweeps_s"] for r in rows])
    result = BenchResult("benchmark_cost", args.size, rows=rows, params={"config": CONFIG})
    result.headlines = [
        Headline("benchmark wall time", together, "s"),
        Headline("same trials as separate sweeps", apart, "s"),
        Headline("separate / benchmark", round(apart / together, 2), "x"),
    ]
    finish(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
