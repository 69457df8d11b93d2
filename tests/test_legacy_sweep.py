"""Sweeps saved by the code before the layered layout resume after it.

Both fixtures were written at commit e8a190e (the flat ``sweep/`` package) by
``sweep run quickstart optimizers=[sgd] reeval_seeds=1 pruner=none workers=1 ...``: their
``sweep.yaml``, ``id``, ``state``, Optuna journal, MLflow store and checkpoints.

- ``legacy_sweep.tar.gz``: a finished sweep (2 trials, 2 epochs). Resumed with ``trials=3``, it
  must keep both finished trials as they were and add exactly one.
- ``legacy_killed_sweep.tar.gz``: a sweep (3 trials, 6 epochs) whose driver was SIGKILLed (with its Ray processes) while
  trial 0 was finished and trial 1 had reported 3 of 6 epochs. ``sweep resume`` must record trial 1
  as interrupted, run it again, and end with exactly 3 trials counted, one run per trial.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweep.cli import main
from sweep.core.config import load_config
from sweep.core.outcome import Status
from sweep.stores.studies import counts_against_budget, open_storage, outcome_of
from tests.sweep_helpers import default_storage, default_tracking_uri, mlflow_runs, runs_per_trial, studies

pytestmark = pytest.mark.slow  # driver subprocesses on the session's Ray

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


def _unpack(archive: str, name: str, into: Path) -> Path:
    """The archive holds the sweep directory ``name``."""
    with tarfile.open(FIXTURES / archive) as tar:
        tar.extractall(into, filter="data")
    return into / name


def _resume(name: str, output_dir: Path, ray_address: str, *overrides: str) -> None:
    command = [
        sys.executable,
        "-m",
        "sweep.cli",
        "resume",
        name,
        "--output-dir",
        str(output_dir),
        *overrides,
        f"ray_address={ray_address}",
    ]
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


def _trials(sweep_dir: Path, name: str):
    open_storage.cache_clear()
    cfg = load_config("quickstart", [f"name={name}", "optimizers=[sgd]"], mode="sweep")
    return studies(cfg, default_storage(sweep_dir))["sgd"].get_trials()


def test_a_finished_sweep_saved_before_the_layout_takes_one_more_trial(ray_address, tmp_path, capsys):
    sweep_dir = _unpack("legacy_sweep.tar.gz", "legacy", tmp_path)
    before = _trials(sweep_dir, "legacy")
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE]

    _resume("legacy", tmp_path, ray_address, "trials=3")

    after = _trials(sweep_dir, "legacy")
    assert [t.state for t in after] == [TrialState.COMPLETE] * 3
    assert [(t.number, t.value, t.params) for t in after[:2]] == [(t.number, t.value, t.params) for t in before]
    _, parents, children = mlflow_runs(default_tracking_uri(sweep_dir), "legacy")
    assert len(parents) == 1
    assert runs_per_trial(children) == {("sgd", 0): 1, ("sgd", 1): 1, ("sgd", 2): 1}
    assert (sweep_dir / "state").read_text().strip() == "finished"

    # The code of the time logged its model to MLflow's Default experiment and its files under the
    # driver's ./mlruns, outside the sweep: the resume logged the model again, into the sweep; the
    # old record, with nothing to load, is named by `sweep check` and goes with --repair.
    check = ["check", "legacy", "--output-dir", str(tmp_path)]
    assert main(check) == 1
    found = capsys.readouterr().out
    assert "logged model model (m-" in found and "its files are missing; run sweep check legacy" in found, found
    assert main([*check, "--repair"]) == 0
    assert "removed the record of logged model model (m-" in capsys.readouterr().out
    assert main(check) == 0
    assert capsys.readouterr().out.strip() == "legacy: healthy: 4 Optuna trials and 4 MLflow runs agree, 1 logged model"


def test_a_killed_sweep_saved_before_the_layout_finishes_exactly(ray_address, tmp_path):
    sweep_dir = _unpack("legacy_killed_sweep.tar.gz", "killed", tmp_path)
    before = _trials(sweep_dir, "killed")
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert len(before[1].intermediate_values) == 3

    _resume("killed", tmp_path, ray_address)

    after = _trials(sweep_dir, "killed")
    assert after[0].value == before[0].value and after[0].params == before[0].params
    assert outcome_of(after[1]).status == Status.INTERRUPTED
    assert sum(counts_against_budget(t) for t in after) == 3
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    _, parents, children = mlflow_runs(default_tracking_uri(sweep_dir), "killed")
    assert len(parents) == 1
    assert set(runs_per_trial(children).values()) == {1} and len(children) == len(after)
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert (sweep_dir / "state").read_text().strip() == "finished"
