"""What runs on a Ray worker: one Optuna trial, reported per epoch to Optuna and MLflow.

The worker reports each epoch's validation accuracy to the trial (so the study's pruner decides
with every other trial's history) and logs the epoch to the trial's MLflow run in one batch.
At the end it finishes the trial through ``finish.finish_trial``: Optuna first, then the run.

Ray re-runs the task when its worker process dies (``max_retries``). The re-run is the same
Optuna trial and the same MLflow run: it counts the attempt, resumes from the run's last
checkpoint (or trains again from the start without one; ``resumed_from_epoch`` records which), and
logs only the epochs the dead attempt had not logged, so every step keeps exactly one value.
A trial that is already finished (the dead attempt told the study, or a new driver failed it as
interrupted) is left as it is.

A store that fails (after its client's retries) raises ``StoreUnavailable`` out of the task: the
driver stops the sweep, and the trial runs again on resume instead of counting as failed.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from sweep import checkpoints, credentials, tracking
from sweep.config import TrialConfig
from sweep.errors import StoreUnavailable, store_calls
from sweep.finish import MLFLOW, OPTUNA, close_from_record, finish_trial
from sweep.outcome import TrialOutcome
from sweep.studies import ATTEMPT, NODE_ADDRESS, NODE_ID, RESUMED_FROM, SweepStudy
from sweep.sweepdir import Stores
from sweep.trial import EpochMetrics, PruneTrial, run_trial


@dataclass(frozen=True)
class TrialTask:
    """One trial to run. ``stores`` holds the full URLs (passwords included; its repr masks them)
    and ``credentials`` the driver's environment credentials (``credentials.from_environment``):
    both travel in memory inside the task, never through Ray's runtime_env, which the GCS keeps."""

    stores: Stores
    study_name: str
    number: int
    run_id: str
    pruner: str
    config: TrialConfig
    threads: int = 1
    credentials: dict[str, str] = field(default_factory=dict, repr=False)


def this_node() -> dict[str, str]:
    """The Ray node running this attempt (recorded per attempt: a retry may run elsewhere)."""
    import ray

    context = ray.get_runtime_context()
    return {NODE_ID: context.get_node_id(), NODE_ADDRESS: ray.util.get_node_ip_address()}


def execute(task: TrialTask, data) -> TrialOutcome:
    """Run the trial with the driver's credentials in this process's environment for its duration
    (a worker on another node has none of its own). A store error leaves without its cause: the
    cause's text may hold a URL, and Ray keeps a failed task's traceback in its GCS."""
    with credentials.environment(task.credentials):
        try:
            return _execute(task, data)
        except StoreUnavailable as exc:
            raise StoreUnavailable(exc.store, exc.detail) from None


def _execute(task: TrialTask, data) -> TrialOutcome:
    import torch

    torch.set_num_threads(max(1, task.threads))
    uri = task.stores.tracking_uri
    with store_calls(OPTUNA):
        study = SweepStudy.load(task.stores.storage, task.study_name, task.pruner, task.config.epochs)
        earlier = study.record(task.number)
    if earlier.state.is_finished():  # told by an attempt whose worker died right after
        return close_from_record(study, uri, task.run_id, task.number)
    with store_calls(OPTUNA):
        trial = study.live_trial(task.number)
        attempt = int(earlier.user_attrs.get(ATTEMPT, 0)) + 1
        trial.set_user_attr(ATTEMPT, attempt)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        node = this_node()
        for name, value in node.items():
            trial.set_user_attr(name, value)
    with store_calls(MLFLOW):
        tracking.tag_run(uri, task.run_id, {f"sweep.{name}": value for name, value in node.items()})
    # epochs an attempt whose worker died already recorded, in each store (it may have died between)
    reported = set(earlier.intermediate_values)
    with store_calls(MLFLOW):
        logged = tracking.logged_steps(uri, task.run_id) if attempt > 1 else set()

    def report(m: EpochMetrics) -> None:
        if m.epoch not in logged:
            with store_calls(MLFLOW):
                tracking.log_epoch(uri, task.run_id, m.logged(), step=m.epoch)
        with store_calls(OPTUNA):
            if m.epoch not in reported:
                trial.report(m.val_accuracy, m.epoch)
            prune = trial.should_prune()
        if prune:
            raise PruneTrial(f"pruned after epoch {m.epoch} (val accuracy {m.val_accuracy:.4f})")

    resume = None
    if attempt > 1:
        resume = checkpoints.load_latest(uri, task.run_id)
        resumed_from = resume.epoch if resume is not None else 0  # 0: none stored, trains from the start
        with store_calls(OPTUNA):
            trial.set_user_attr(RESUMED_FROM, resumed_from)
        with store_calls(MLFLOW):
            tracking.tag_run(uri, task.run_id, {f"sweep.{RESUMED_FROM}": resumed_from})
    result = run_trial(task.config, data, report, resume, checkpoints.saver(uri, task.run_id))
    return finish_trial(study, uri, task.run_id, task.number, result.status, result.reason, result.metrics,
                        result.value)
