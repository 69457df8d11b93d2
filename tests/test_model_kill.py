"""A driver stopped while it logs the best models, at each moment between the writes a logged
model takes: the next `sweep resume` ends with exactly one READY model per optimizer, its files
there, loadable. Real Ray, real MLflow SQLite store, real signals; ``tests.stop_at`` picks the
moment (the sweep's own code runs unchanged).

One sweep, stopped again and again: each resume first meets what the stop before it left (a
PENDING model without files, a READY one never tagged, nothing) and is stopped at the next
moment. Another sweep meets a full disk there.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep.core.keys import Tag
from sweep.stores import logged_models, tracking
from sweep.stores.sweepdir import SweepDir
from tests.sweep_helpers import default_tracking_uri
from tests.test_faults import small_disk  # noqa: F401 - the fixture: a 4 MiB tmpfs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
OPTIMIZERS = ("sgd", "momentum")


def _sweep(out: Path, ray_address: str) -> list[str]:
    return [
        "run",
        "quickstart",
        f"output_dir={out}",
        "name=models-stopped",
        f"optimizers=[{','.join(OPTIMIZERS)}]",
        "trials=1",
        "epochs=1",
        "batch_size=64",
        "workers=2",
        "pruner=none",
        "schedules=[constant]",
        "reeval_seeds=1",
        "report_figures=false",
        f"ray_address={ray_address}",
    ]


def _stopped(moment: str, sig: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI, stopped by ``sig`` at ``moment``: it must end by that signal, not finish."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.stop_at", moment, sig, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    code = -signal.SIGKILL if sig == "SIGKILL" else 128 + signal.SIGTERM
    assert done.returncode == code, (moment, sig, done.returncode, done.stdout, done.stderr)
    return done


def _models(uri: str, experiment_id: str) -> dict[str, list[logged_models.LoggedModelRecord]]:
    found = logged_models.records(uri, experiment_id)
    return {opt: [r for r in found if r.name == opt] for opt in OPTIMIZERS}


def _shape(records: list[logged_models.LoggedModelRecord], tagged: set[str]) -> list[tuple[str, bool, bool]]:
    """Each model as (status, files there, the run's tag names it)."""
    return [(r.status, r.files, r.uri in tagged) for r in records]


def test_a_stop_at_any_moment_of_model_logging_then_resume_leaves_one_ready_model(ray_address, tmp_path):
    import mlflow
    import torch

    from sweep.core.datasets import load_dataset

    out = tmp_path / "sweeps"
    sweep_dir = SweepDir.of(str(out), "models-stopped").path
    resume = ["resume", "models-stopped", "--output-dir", str(out)]
    uri = default_tracking_uri(sweep_dir)
    started = time.monotonic()

    def models_now():
        client = tracking.client(uri)
        experiment = client.get_experiment_by_name("models-stopped").experiment_id
        runs = client.search_runs([experiment], f"tags.`{Tag.ROLE}` = '{tracking.REEVAL_ROLE}'")
        tagged = {r.data.tags[Tag.MODEL_URI] for r in runs if Tag.MODEL_URI in r.data.tags}
        return {opt: _shape(found, tagged) for opt, found in _models(uri, experiment).items()}

    # (moment, signal, what each optimizer's runs hold once stopped there)
    steps = [
        ("initialized", "SIGKILL", [("PENDING", False, False)], []),
        ("ready", "SIGKILL", [("READY", True, False)], []),  # the leftover above deleted first
        ("tagged", "SIGKILL", [("READY", True, True)], []),  # adopted, tagged; the second not begun
        ("files", "SIGTERM", [("READY", True, True)], []),  # a SIGTERM deletes its own half model
        ("ready", "SIGKILL", [("READY", True, True)], [("READY", True, False)]),
    ]
    for i, (moment, sig, first, second) in enumerate(steps):
        _stopped(moment, sig, *(_sweep(out, ray_address) if i == 0 else resume))
        assert models_now() == {"sgd": first, "momentum": second}, (moment, sig)

    done = subprocess.run(
        [sys.executable, "-m", "sweep.cli", *resume], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert models_now() == {opt: [("READY", True, True)] for opt in OPTIMIZERS}
    assert SweepDir(sweep_dir).state() == "finished"

    mlflow.set_tracking_uri(uri)
    experiment = tracking.client(uri).get_experiment_by_name("models-stopped").experiment_id
    images = torch.from_numpy(load_dataset("digits", seed=0).test_x[:4])
    for opt, [model] in _models(uri, experiment).items():
        assert model.experiment_id == experiment
        with torch.no_grad():
            assert mlflow.pytorch.load_model(model.uri)(images).shape == (4, 10), opt
    print(f"{len(steps)} stops and a resume: {time.monotonic() - started:.1f} s")


def test_a_full_disk_while_a_model_is_logged_stops_the_sweep_and_resume_logs_it(ray_address, small_disk):  # noqa: F811
    """The disk fills once the model's record is created, before its files: the sweep stops as
    interrupted (one error line, no traceback), not finished without a model; once there is room
    again, resume logs the one model."""
    import mlflow

    out = small_disk / "sweeps"
    filler = small_disk / "filler"
    args = _sweep(out, ray_address)
    args[args.index(f"optimizers=[{','.join(OPTIMIZERS)}]")] = "optimizers=[sgd]"
    sweep_dir = SweepDir.of(str(out), "models-stopped").path
    done = subprocess.run(
        [sys.executable, "-m", "tests.stop_at", "initialized", f"fill:{filler}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("sweep: error:")]
    assert done.returncode == 1 and len(errors) == 1 and " unavailable: " in errors[0], done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert SweepDir(sweep_dir).state() == "interrupted"
    uri = default_tracking_uri(sweep_dir)
    experiment = tracking.client(uri).get_experiment_by_name("models-stopped").experiment_id
    assert not [r for r in logged_models.records(uri, experiment) if r.complete]

    filler.unlink()
    resume = ["resume", "models-stopped", "--output-dir", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "sweep.cli", *resume], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [model] = logged_models.records(uri, experiment)
    assert model.complete and model.name == "sgd"
    [run] = tracking.client(uri).search_runs([experiment], f"tags.`{Tag.ROLE}` = '{tracking.REEVAL_ROLE}'")
    assert run.data.tags[Tag.MODEL_URI] == model.uri
    mlflow.set_tracking_uri(uri)
    assert mlflow.pytorch.load_model(model.uri) is not None
