"""A sweep saved by the code before the layered layout (``tests/fixtures/legacy_sweep.tar.gz``) resumes.

The fixture was written by ``sweep run quickstart name=legacy optimizers=[sgd] trials=2 epochs=2
reeval_seeds=1 pruner=none workers=1`` at commit e8a190e (the flat ``sweep/`` package): its
``sweep.yaml``, ``id``, Optuna journal, MLflow store and checkpoints. Resuming it with one more
trial must read every one of them, keep the finished trials as they were, and add exactly one.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweep.core.config import load_config
from sweep.stores.studies import open_storage
from tests.sweep_helpers import default_storage, default_tracking_uri, mlflow_runs, runs_per_trial, studies

pytestmark = pytest.mark.slow  # a driver subprocess on the session's Ray

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "legacy_sweep.tar.gz"


def test_a_sweep_saved_before_the_layout_resumes(ray_address, tmp_path):
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    sweep_dir = tmp_path / "legacy"
    storage, tracking = default_storage(sweep_dir), default_tracking_uri(sweep_dir)
    cfg = load_config("quickstart", ["name=legacy", "optimizers=[sgd]"], mode="sweep")
    open_storage.cache_clear()
    before = studies(cfg, storage)["sgd"].get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE]

    command = [sys.executable, "-m", "sweep.cli", "resume", "legacy", "--output-dir", str(tmp_path), "trials=3",
               f"ray_address={ray_address}"]
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    open_storage.cache_clear()
    after = studies(cfg, storage)["sgd"].get_trials()
    assert [t.state for t in after] == [TrialState.COMPLETE] * 3
    assert [(t.number, t.value, t.params) for t in after[:2]] == [(t.number, t.value, t.params) for t in before]
    _, parents, children = mlflow_runs(tracking, "legacy")
    assert len(parents) == 1
    assert runs_per_trial(children) == {("sgd", 0): 1, ("sgd", 1): 1, ("sgd", 2): 1}
    assert (sweep_dir / "state").read_text().strip() == "finished"
