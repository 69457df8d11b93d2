"""What runs on a Ray worker: one Optuna trial, reported per epoch to Optuna and MLflow.

The worker reports each epoch's validation accuracy to the trial (so the study's pruner decides
with every other trial's history) and logs the epoch to the trial's MLflow run in one batch.
At the end it tells the study first (the source of truth), then closes the run; if it dies in
between, the driver closes the run from the study's record.

Ray re-runs the task when its worker process dies (``max_retries``). The re-run is the same
Optuna trial and the same MLflow run: it counts the attempt, trains again from the start, and
logs only the epochs the dead attempt had not logged, so every step keeps exactly one value.
A trial that is already finished (the dead attempt told the study, or a new driver failed it as
interrupted) is left as it is.
"""
from __future__ import annotations

import math
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from sweep import tracking
from sweep.studies import make_pruner, open_storage
from sweep.trial import PruneTrial, TrialConfig, TrialResult, run_trial

OPTUNA_STATE = {"ok": TrialState.COMPLETE, "diverged": TrialState.COMPLETE,
                "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


@dataclass
class TrialTask:
    storage_url: str
    study_name: str
    trial_id: int
    trial_number: int
    tracking_uri: str
    run_id: str
    pruner: str
    config: TrialConfig
    threads: int = 1


def execute(task: TrialTask, data) -> dict[str, Any]:
    import torch

    torch.set_num_threads(max(1, task.threads))
    study = optuna.load_study(study_name=task.study_name, storage=open_storage(task.storage_url),
                              pruner=make_pruner(task.pruner, task.config.epochs))
    earlier = study._storage.get_trial(task.trial_id)
    if earlier.state.is_finished():  # told by an attempt whose worker died right after
        return _recorded_outcome(earlier, task)
    trial = optuna.trial.Trial(study, task.trial_id)
    attempt = earlier.user_attrs.get("attempt", 0) + 1
    trial.set_user_attr("attempt", attempt)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    # epochs an attempt whose worker died already recorded, in each store (it may have died between)
    reported = set(earlier.intermediate_values)
    logged = tracking.logged_steps(task.tracking_uri, task.run_id) if attempt > 1 else set()

    def report(m):
        if m.epoch not in logged:
            tracking.log_epoch(task.tracking_uri, task.run_id,
                               {k: v for k, v in asdict(m).items() if k != "epoch"}, step=m.epoch)
        if m.epoch not in reported:
            trial.report(m.val_accuracy, m.epoch)
        if trial.should_prune():
            raise PruneTrial(f"pruned after epoch {m.epoch} (val accuracy {m.val_accuracy:.4f})")

    result = run_trial(task.config, data, report)
    if not study._storage.get_trial(task.trial_id).state.is_finished():  # else a new driver failed it
        _tell(study, trial, result)
    return _recorded_outcome(study._storage.get_trial(task.trial_id), task)


def _tell(study: optuna.Study, trial: optuna.trial.Trial, result: TrialResult) -> None:
    state = OPTUNA_STATE[result.status]
    for key, value in result.metrics.items():
        if math.isfinite(value):
            trial.set_user_attr(f"final_{key}", value)
    trial.set_user_attr("status", result.status)
    if result.reason:
        trial.set_user_attr("fail_reason" if state == TrialState.FAIL else "reason", result.reason)
    if state == TrialState.COMPLETE:
        value = result.metrics.get("val_accuracy", 0.0)
        study.tell(trial.number, value if math.isfinite(value) else 0.0, skip_if_finished=True)
    else:
        study.tell(trial.number, state=state, skip_if_finished=True)


def _recorded_outcome(trial: optuna.trial.FrozenTrial, task: TrialTask) -> dict[str, Any]:
    """The study's record of a finished trial, written to its MLflow run if that is still open."""
    try:
        tracking.close_run_from_trial(task.tracking_uri, task.run_id, trial)
    except Exception as exc:  # the study has the outcome; the driver closes the run later
        print(f"warning: trial {trial.number}: could not close MLflow run {task.run_id}: {exc}")
    attrs = trial.user_attrs
    return {"number": trial.number, "status": attrs.get("status", "failed"), "state": trial.state.name,
            "value": trial.value, "reason": attrs.get("fail_reason") or attrs.get("reason", ""),
            "epochs": len(trial.intermediate_values), **{k: v for k, v in attrs.items() if k.startswith("final_")}}
