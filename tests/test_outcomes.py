"""Every trial run carries its final metrics and its outcome, named one way in Optuna and MLflow,
visible at a glance (run status), whatever the outcome; no name means two things in one run."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from sweep.core.config import load_config
from sweep.core.outcome import RECORDS, Status
from sweep.execution.launch import run_sweep
from tests.sweep_helpers import default_storage, default_tracking_uri, mlflow_runs, studies, sweep_dir_of

pytestmark = pytest.mark.slow


def test_first_epoch_divergence_has_metrics_and_status_in_both_stores(ray_address, sweep_overrides):
    cfg = load_config(
        "quickstart",
        sweep_overrides
        + [
            "name=blowup",
            "optimizers=[sgd,adam]",
            "trials=2",
            "epochs=2",
            "workers=2",
            "pruner=none",
            "schedules=[constant]",
            "optimizer.lr=50",
        ],
        mode="sweep",
    )  # diverges in its first epoch
    result = run_sweep(cfg)
    assert {row.optimizer: row.counts["diverged"] for row in result.rows} == {"sgd": 2, "adam": 2}
    assert all(row.best_val_accuracy is None for row in result.rows)  # a diverged trial is no result
    sweep_dir = sweep_dir_of(cfg)
    by_opt = studies(cfg, default_storage(sweep_dir))
    client, _, children = mlflow_runs(default_tracking_uri(sweep_dir), cfg.name)
    assert len(children) == 4
    for run in children:
        trial = by_opt[run.data.tags["sweep.optimizer"]].trials[int(run.data.tags["optuna.trial_number"])]
        assert trial.state == TrialState.COMPLETE and trial.user_attrs["status"] == "diverged"
        assert run.data.tags["sweep.status"] == "diverged" and run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.tags["sweep.reason"] == trial.user_attrs["reason"] and "epoch 1" in trial.user_attrs["reason"]
        assert run.info.status == RECORDS[Status.DIVERGED].mlflow_status == "FAILED"
        assert "optuna.fail_reason" not in run.data.tags
        metrics = run.data.metrics
        for name in ("final_val_accuracy", "final_best_val_accuracy", "final_epochs", "final_seconds"):
            assert name in metrics, name
        assert metrics["final_val_accuracy"] == trial.value and metrics["final_epochs"] == 0
        # the searched/fixed `lr` is a param; the schedule's per-epoch LR is a differently named metric
        assert run.data.params["lr"] == "50" and "lr" not in metrics
        assert not client.get_metric_history(run.info.run_id, "lr")
