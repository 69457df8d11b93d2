"""What a user sees of a sweep, end to end on real parts: the best models in the sweep's own
experiment and directory (loadable after the directory moves), a terminal free of Ray's start-up
chatter, and a final ranking that fits 100 columns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.cli import main

REPO = Path(__file__).resolve().parent.parent
WIDTH = 100
TINY = ["optimizers=[sgd]", "trials=1", "epochs=1", "batch_size=64", "reeval_seeds=1", "report_figures=false"]


def _too_wide(output: str, *paths: Path) -> list[str]:
    """Lines longer than WIDTH once the user's own paths are counted as three characters."""

    def shown(line: str) -> str:
        for path in paths:
            line = line.replace(str(path), "DIR")
        return line

    return [line for line in output.splitlines() if len(shown(line)) > WIDTH]


@pytest.mark.slow
def test_best_model_is_the_sweep_s_named_after_its_optimizer_and_loads_after_a_move(ray_address, tmp_path, capsys):
    import mlflow
    import torch
    from mlflow import MlflowClient

    from sweep.core.datasets import load_dataset
    from tests.sweep_helpers import default_tracking_uri, text_cells

    out_dir = tmp_path / "sweeps"
    assert main(["run", "quickstart", f"output_dir={out_dir}", "name=models", *TINY, f"ray_address={ray_address}"]) == 0
    printed = capsys.readouterr()
    assert not _too_wide(printed.out, out_dir), _too_wide(printed.out, out_dir)  # the ranking included
    assert "rank  optimizer" in printed.out and "| rank |" not in printed.out
    sweep_dir = out_dir / "models"
    uri = default_tracking_uri(sweep_dir)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("models")
    [model] = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert model.name == "sgd" and model.experiment_id == experiment.experiment_id
    assert model.artifact_location == f"{(sweep_dir / 'artifacts').as_uri()}/models/{model.model_id}/artifacts"
    assert (sweep_dir / "artifacts" / "models" / model.model_id / "artifacts" / "MLmodel").is_file()
    assert client.search_logged_models(experiment_ids=["0"]) == []  # nothing in the Default experiment
    [source] = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'reeval'")
    assert model.source_run_id == source.info.run_id  # the run that trained it
    assert [m.model_id for m in client.get_run(source.info.run_id).outputs.model_outputs] == [model.model_id]
    summary = json.loads((sweep_dir / "summary.json").read_text())["optimizers"]["sgd"]
    assert summary["model_uri"] == f"models:/{model.model_id}"

    # the sweep directory moves; the next sweep command on it points the store at its new place
    moved = tmp_path / "elsewhere" / "models"
    moved.parent.mkdir()
    shutil.move(sweep_dir, moved)
    assert main(["report", "models", "--output-dir", str(moved.parent)]) == 0
    printed = capsys.readouterr().out
    assert not _too_wide(printed, moved.parent), _too_wide(printed, moved.parent)
    assert not [c for c in text_cells(moved / "mlflow.db") if str(sweep_dir) in c]  # no trace of the old place
    mlflow.set_tracking_uri(default_tracking_uri(moved))
    net = mlflow.pytorch.load_model(summary["model_uri"])
    data = load_dataset("digits", seed=0)
    with torch.no_grad():
        predicted = net(torch.from_numpy(data.test_x)).argmax(1).numpy()
    assert float((predicted == data.test_y).mean()) == pytest.approx(summary["test_accuracy_mean"], abs=1e-9)


@pytest.mark.slow
def test_a_sweep_that_starts_its_own_ray_prints_none_of_ray_s_chatter(tmp_path):
    """`sweep run` without ray_address starts a local Ray: on a machine without a Ray token (a
    fresh HOME) Ray generates one and says so, says it started, and warns that token
    authentication is on. None of it reaches the terminal."""
    home = tmp_path / "home"
    home.mkdir()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")  # the MLflow template, fonts
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "HOME": str(home),
        "XDG_CACHE_HOME": cache,
        "PYTHONPATH": str(REPO),
    }
    env.pop("RAY_LOGGER_LEVEL", None)
    out_dir = tmp_path / "sweeps"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep.cli",
            "run",
            "quickstart",
            f"output_dir={out_dir}",
            "name=quiet",
            *TINY,
            "workers=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert (home / ".ray" / "auth_token").is_file()  # Ray did generate a token here (and started itself)
    assert "Token authentication" not in output and "authentication token" not in output, output
    assert " INFO " not in output and "Started a local Ray instance" not in output, output
    assert "rank  optimizer" in output and not _too_wide(done.stdout, out_dir), done.stdout


RAY_RECORDS = """
import logging

from sweep.execution import ray_logs

ray_logs.quiet()
ray_logs.quiet()  # once is enough: no second filter
handlers = logging.getLogger("ray").handlers
assert handlers and all(sum(isinstance(f, ray_logs.RayNoise) for f in h.filters) == 1 for h in handlers)
worker = logging.getLogger("ray._private.worker")
auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
worker.info("Started a local Ray instance.")
auth.info("Generated new authentication token and saved to /root/.ray/auth_token")
auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
worker.warning("Ray could not reach node 10.0.0.2")
logging.getLogger("ray").error("Failed to connect to GCS at 127.0.0.1:1")
"""


@pytest.mark.slow  # a fresh interpreter imports Ray
def test_ray_warnings_and_errors_still_reach_the_terminal():
    """The filter on Ray's own handler, in a fresh interpreter as the driver has it: INFO and the
    token notice go, Ray's other warnings and its errors stay."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_LOGGER_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", RAY_RECORDS], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr.splitlines()
    assert [line.split(" -- ")[-1] for line in err] == [
        "Ray could not reach node 10.0.0.2",
        "Failed to connect to GCS at 127.0.0.1:1",
    ], err
    assert "WARNING" in err[0] and "ERROR" in err[1], err
    done = subprocess.run(
        [sys.executable, "-c", RAY_RECORDS],
        cwd=REPO,
        env={**env, "RAY_LOGGER_LEVEL": "info"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Started a local Ray instance." in done.stderr  # asked for: Ray's INFO lines are back
    assert "Token authentication" not in done.stderr
