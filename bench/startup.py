"""Start-up cost: how long a user waits before a sweep trains, against what no sweep can beat.

The floor is a fresh interpreter that imports torch, Ray, Optuna and MLflow and starts a local
Ray the way ``sweep.execution.launch.init_ray`` does (then shuts it down): every sweep pays at least that.
Against it, a 1-trial, 1-epoch sweep through the real ``sweep`` command: its total wall time and
the time from launch to its first trial running (the trial's ``datetime_start`` in the Optuna
study, read after the run, against a wall-clock stamp taken just before the launch). Target: both
within 1.3x of the floor. Also the commands that must answer at once (help, ``ls``, bad input):
target under 0.5 s each.

Repeats interleave floor, sweep and commands, so a burst of load from other jobs on a shared
machine falls on all of them rather than on one; each row keeps the 1-minute load average.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite import BenchResult, Headline, Size, finish, median, parser  # noqa: E402

VENV_BIN = Path(sys.executable).parent  # the venv that runs the bench runs the product
REPEATS = {Size.CI: 3, Size.FULL: 5}
RATIO_TARGET = 1.3
COMMAND_TARGET_S = 0.5
SWEEP_ARGS = ["run", "quickstart", "optimizers=[sgd]", "trials=1", "epochs=1", "reeval_seeds=0", "report_figures=false"]
# what init_ray does for a local run (sweep/execution/launch.py); kept in step with it by hand
FLOOR_CODE = (
    "import os, torch, ray, optuna, mlflow\n"
    "ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)\n"
    "ray.shutdown()\n"
)


@dataclass(frozen=True)
class Timed:
    seconds: float
    rc: int
    load_1m: float
    tail: str  # the end of stderr, kept when the command failed


def timed(argv: list[str], cwd: Path) -> Timed:
    """Wall time of one fresh process, launch to exit."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    return Timed(seconds, proc.returncode, load, "" if proc.returncode in (0, 2) else proc.stderr[-800:])


def first_trial(output_dir: Path) -> tuple[float, float]:
    """Trial 0's start and end (epoch seconds) as the sweep's Optuna study holds them."""
    from sweep.stores.studies import SweepStudy, study_name
    from sweep.stores.sweepdir import SweepDir

    stores = SweepDir.of(str(output_dir), "quickstart").stores(None, None)
    study = SweepStudy.find(stores.storage, study_name("quickstart", "sgd"))
    if study is None or not study.trials():
        raise RuntimeError(f"no trial recorded under {output_dir}")
    trial = study.record(0)
    return trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()


def sweep_once(workdir: Path) -> dict[str, float | int | str]:
    """One 1-trial sweep as a user runs it; seconds from launch to trial 0's start and end."""
    out = workdir / f"sweeps-{time.monotonic_ns()}"
    load = os.getloadavg()[0]
    launched = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(VENV_BIN / "sweep"), *SWEEP_ARGS, "--output-dir", str(out)], cwd=workdir, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sweep exited {proc.returncode}: {proc.stderr[-1500:]}")
    start, end = first_trial(out)
    return {
        "seconds": wall,
        "to_first_trial_s": start - launched,
        "trial_span_s": end - start,
        "trial_end_to_exit_s": launched + wall - end,
        "rc": proc.returncode,
        "load_1m": load,
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None, help="override the size's repeats (ci 3, full 5)")
    args = ap.parse_args(argv)
    repeats = args.repeats or REPEATS[args.size]
    python, sweep = str(VENV_BIN / "python"), str(VENV_BIN / "sweep")
    result = BenchResult(
        "startup",
        args.size,
        params={"repeats": repeats, "sweep": " ".join(["sweep", *SWEEP_ARGS]), "floor": FLOOR_CODE},
    )
    floors: list[float] = []
    sweeps: list[dict] = []
    commands: dict[str, list[float]] = {"sweep --help": [], "sweep ls": [], "sweep run trials=0 (bad input)": []}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        (work / "sweeps").mkdir()
        timed([sweep, "--help"], work)  # page the entry point and the venv into the OS cache once, untimed
        for i in range(repeats):
            t = timed([python, "-c", FLOOR_CODE], work)
            if t.rc != 0:
                raise RuntimeError(f"floor process exited {t.rc}: {t.tail}")
            floors.append(t.seconds)
            result.rows.append(
                {
                    "what": "floor: import torch+ray+optuna+mlflow, ray.init, shutdown",
                    "repeat": i,
                    "seconds": t.seconds,
                    "load_1m": t.load_1m,
                }
            )
            s = sweep_once(work)
            sweeps.append(s)
            result.rows.append({"what": "sweep run, 1 trial x 1 epoch", "repeat": i, **s})
            for name, cmd, want in [
                ("sweep --help", [sweep, "--help"], 0),
                ("sweep ls", [sweep, "ls", "--output-dir", str(work / "sweeps")], 0),
                ("sweep run trials=0 (bad input)", [sweep, "run", "trials=0"], 2),
            ]:
                c = timed(cmd, work)
                if c.rc != want:
                    raise RuntimeError(f"{name} exited {c.rc}, expected {want}: {c.tail}")
                commands[name].append(c.seconds)
                result.rows.append({"what": name, "repeat": i, "seconds": c.seconds, "rc": c.rc, "load_1m": c.load_1m})
    floor = median(floors)
    total = median(s["seconds"] for s in sweeps)
    first = median(s["to_first_trial_s"] for s in sweeps)
    result.rows.append({"what": "median floor", "seconds": floor})
    result.rows.append(
        {
            "what": "median sweep",
            "seconds": total,
            "to_first_trial_s": first,
            "trial_span_s": median(s["trial_span_s"] for s in sweeps),
            "trial_end_to_exit_s": median(s["trial_end_to_exit_s"] for s in sweeps),
        }
    )
    result.headlines += [
        Headline("floor (imports + ray.init)", floor, "s", note=f"median of {repeats}"),
        Headline(
            "sweep launch to first trial running / floor",
            first / floor,
            "x",
            f"<= {RATIO_TARGET}",
            first / floor <= RATIO_TARGET,
            f"{first:.2f} s vs {floor:.2f} s",
        ),
        Headline(
            "1-trial sweep total / floor",
            total / floor,
            "x",
            f"<= {RATIO_TARGET}",
            total / floor <= RATIO_TARGET,
            f"{total:.2f} s vs {floor:.2f} s",
        ),
    ]
    for name, values in commands.items():
        m = median(values)
        result.rows.append({"what": f"median {name}", "seconds": m})
        result.headlines.append(Headline(name, m, "s", f"< {COMMAND_TARGET_S}", m < COMMAND_TARGET_S))
    result.notes.append(f"load average {os.getloadavg()[0]:.2f} at the end; the machine is shared, read the ratios")
    finish(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
