"""SIGKILL the Ray worker process in the middle of a trial: Ray retries it, or it is a recorded FAIL.

Either way the sweep finishes, the trial keeps exactly one MLflow run, and every epoch keeps
exactly one value in MLflow and in Optuna.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep.core.config import load_config
from sweep.stores.studies import open_storage, study_name
from tests.sweep_helpers import (
    default_storage,
    default_tracking_uri,
    mlflow_runs,
    runs_per_trial,
    studies,
    sweep_dir_of,
    sweep_with_a_killed_worker,
)

pytestmark = pytest.mark.slow  # sweeps on the session's Ray, a worker killed mid-trial

EPOCHS = 8


def _running_trial_with_an_epoch(storage_url: str, name: str):
    if not Path(storage_url[len("journal://") :]).exists():
        return None
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except KeyError:  # not created yet
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.intermediate_values and "worker" in t.user_attrs:
            return t
    return None


@pytest.mark.parametrize("max_retries", [1, 0])
def test_worker_killed_mid_trial(ray_address, sweep_overrides, max_retries):
    cfg = load_config(
        "quickstart",
        sweep_overrides
        + [
            f"name=worker-dies-{max_retries}",
            "optimizers=[momentum]",
            "trials=2",
            f"epochs={EPOCHS}",
            "batch_size=8",
            "workers=1",
            "pruner=none",
            "schedules=[constant]",
            "optimizer.lr=0.01",
            f"max_retries={max_retries}",
        ],
        mode="sweep",
    )
    sweep_dir = sweep_dir_of(cfg)
    storage_url = default_storage(sweep_dir)
    victim, code = sweep_with_a_killed_worker(
        cfg,
        lambda: _running_trial_with_an_epoch(storage_url, study_name(cfg.name, "momentum")),
        "a running trial with a reported epoch",
    )
    assert code == 0

    study = studies(cfg, storage_url)["momentum"]
    assert len(study.trials) == 2
    trial = study.trials[victim.number]
    client, parents, children = mlflow_runs(default_tracking_uri(sweep_dir), cfg.name)
    assert len(parents) == 1 and len(children) == 2 and set(runs_per_trial(children).values()) == {1}
    run = next(r for r in children if r.data.tags["optuna.trial_number"] == str(victim.number))
    assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy"))
    summary = json.loads((sweep_dir / "summary.json").read_text())["optimizers"]["momentum"]
    if max_retries:
        assert trial.state == TrialState.COMPLETE and trial.user_attrs["attempt"] == 2
        assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1))
        assert steps == list(range(1, EPOCHS + 1))  # the dead attempt's epochs are not logged twice
        assert run.info.status == "FINISHED" and run.data.tags["sweep.attempts"] == "2"
        assert summary["ok"] == 2 and summary["failed"] == 0
    else:
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["reason"].startswith("worker error: ")
        assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
        assert run.data.tags["sweep.reason"] == trial.user_attrs["reason"]
        assert run.data.tags["sweep.status"] == trial.user_attrs["status"] == "failed"
        assert len(steps) == len(set(steps)) >= 1
        assert summary["ok"] == 1 and summary["failed"] == 1
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
