"""What runs on a Ray worker: one Optuna trial, reported per epoch to Optuna and MLflow.

The worker reports each epoch's validation accuracy to the trial (so the study's pruner decides
with every other trial's history), logs the epoch to the trial's MLflow run in one batch, and
finishes both itself, so a finished trial is recorded even if the driver dies right after.

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
from sweep.trial import PruneTrial, TrialConfig, run_trial

OPTUNA_STATE = {"ok": TrialState.COMPLETE, "diverged": TrialState.COMPLETE,
                "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
MLFLOW_STATUS = {"ok": "FINISHED", "diverged": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}


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
    if earlier.state.is_finished():
        return _recorded_outcome(earlier)
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
    now = study._storage.get_trial(task.trial_id)
    if now.state.is_finished():  # a new driver failed it as interrupted meanwhile: its outcome stands
        return _recorded_outcome(now)
    state = OPTUNA_STATE[result.status]
    value = result.metrics.get("val_accuracy", 0.0)
    if not math.isfinite(value):
        value = 0.0
    final = {f"final_{k}": v for k, v in result.metrics.items() if math.isfinite(v)}
    for key, v in final.items():
        trial.set_user_attr(key, v)
    trial.set_user_attr("status", result.status)
    if result.reason:
        trial.set_user_attr("fail_reason" if state == TrialState.FAIL else "reason", result.reason)
    tags = {tracking.STATE: state.name, "status": result.status, tracking.ATTEMPTS: attempt}
    if result.reason:
        tags[tracking.REASON] = result.reason
    tracking.finish_trial_run(task.tracking_uri, task.run_id, final, tags, MLFLOW_STATUS[result.status])
    if state == TrialState.COMPLETE:
        study.tell(task.trial_number, value, skip_if_finished=True)
    else:
        study.tell(task.trial_number, state=state, skip_if_finished=True)
    return {"number": task.trial_number, "status": result.status, "state": state.name, "value": value,
            "reason": result.reason, "epochs": result.epochs_run, **final}


def _recorded_outcome(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """What the study already holds for a finished trial, in ``execute``'s return shape."""
    attrs = trial.user_attrs
    status = attrs.get("status", "failed" if trial.state == TrialState.FAIL else "ok")
    return {"number": trial.number, "status": status, "state": trial.state.name, "value": trial.value,
            "reason": attrs.get("fail_reason") or attrs.get("reason", ""), "epochs": len(trial.intermediate_values),
            **{k: v for k, v in attrs.items() if k.startswith("final_")}}
