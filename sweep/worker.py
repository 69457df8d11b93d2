"""What runs on a Ray worker: one Optuna trial, reported per epoch to Optuna and MLflow.

The worker reports each epoch's validation accuracy to the trial (so the study's pruner decides
with every other trial's history) and queues the epoch for the trial's MLflow run in one batch
(``mlflow_sender``: sent in the background, so a tracking server that is away for a while never
stalls training; past ``tracking_retry_s`` the trial fails with the epochs it could not log).
At the end it finishes the trial through ``finish.finish_trial``: Optuna first, then the run.

Ray re-runs the task when its worker process dies (``max_retries``). The re-run is the same
Optuna trial and the same MLflow run: it counts the attempt, resumes from the run's last
checkpoint (or trains again from the start without one; ``resumed_from_epoch`` records which), and
logs only the epochs the dead attempt had not logged, so every step keeps exactly one value.
A trial that is already finished (the dead attempt told the study, or a new driver failed it as
interrupted) is left as it is.

An Optuna storage that fails (after its client's retries) raises ``StoreUnavailable`` out of the
task: the driver stops the sweep, and the trial runs again on resume instead of counting as failed.
"""
from __future__ import annotations

import contextlib
import gc
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sweep import checkpoints, credentials, tracking
from sweep.config import TrialConfig
from sweep.errors import StoreUnavailable, store_calls
from sweep.finish import MLFLOW, OPTUNA, close_from_record, finish_trial
from sweep.mlflow_sender import TrackingSender, use_short_requests
from sweep.outcome import Status, TrialOutcome
from sweep.studies import ATTEMPT, NODE_ADDRESS, NODE_ID, RESUMED_FROM, SweepStudy
from sweep.sweepdir import Stores

if TYPE_CHECKING:
    from sweep.trial import EpochMetrics


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
    (a worker on another node has none of its own), its MLflow writes through a sender that rides
    out a tracking-server outage. A store error leaves without its cause: the cause's text may hold
    a URL, and Ray keeps a failed task's traceback in its GCS."""
    use_short_requests()
    with credentials.environment(task.credentials):
        try:
            with TrackingSender(task.stores.tracking_uri, task.run_id, task.config.tracking_retry_s) as sender:
                return _execute(task, data, sender)
        except StoreUnavailable as exc:
            raise StoreUnavailable(exc.store, exc.detail) from None


def _execute(task: TrialTask, data, sender: TrackingSender) -> TrialOutcome:
    import torch

    from sweep.trial import PruneTrial, run_trial  # torch: imported here, so the driver never does

    entered = time.perf_counter()
    torch.set_num_threads(max(1, task.threads))
    uri = task.stores.tracking_uri
    with store_calls(OPTUNA):
        study = SweepStudy.load(task.stores.storage, task.study_name, task.pruner, task.config.epochs)
        earlier = study.record(task.number)
    if earlier.state.is_finished():  # told by an attempt whose worker died right after
        return close_from_record(study, uri, task.run_id, task.number, close_run=sender.close_run)
    node = this_node()  # Ray's own context: not a store call
    with store_calls(OPTUNA):
        trial = study.live_trial(task.number)
        attempt = int(earlier.user_attrs.get(ATTEMPT, 0)) + 1
        trial.set_user_attr(ATTEMPT, attempt)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        for name, value in node.items():
            trial.set_user_attr(name, value)
    sender.tag({f"sweep.{name}": value for name, value in node.items()})
    # epochs an attempt whose worker died already recorded, in each store (it may have died between)
    reported = set(earlier.intermediate_values)
    with store_calls(MLFLOW):
        logged = sender.call(lambda: tracking.logged_steps(uri, task.run_id)) if attempt > 1 else set()

    spent = {"report_seconds": 0.0}  # the per-epoch store calls, inside the trial's own time

    def report(m: EpochMetrics) -> None:
        reporting = time.perf_counter()
        try:
            _report(m)
        finally:
            spent["report_seconds"] += time.perf_counter() - reporting

    def _report(m: EpochMetrics) -> None:
        if m.epoch not in logged:
            sender.log_epoch(m.epoch, m.logged())
        sender.catch_up()  # MLflow before Optuna while MLflow answers; no wait during an outage
        sender.check()  # MLflow away past tracking_retry_s: the trial fails (a store error stops the sweep)
        with store_calls(OPTUNA):
            if m.epoch not in reported:
                trial.report(m.val_accuracy, m.epoch)
            prune = trial.should_prune()
        if prune:
            raise PruneTrial(f"pruned after epoch {m.epoch} (val accuracy {m.val_accuracy:.4f})")

    resume = None
    if attempt > 1:
        resume = checkpoints.load_latest(uri, task.run_id, task.stores.artifacts)
        resumed_from = resume.epoch if resume is not None else 0  # 0: none stored, trains from the start
        with store_calls(OPTUNA):
            trial.set_user_attr(RESUMED_FROM, resumed_from)
        sender.tag({f"sweep.{RESUMED_FROM}": resumed_from})
        for m in resume.history if resume is not None else ():  # stored with the checkpoint, maybe
            if m.epoch not in logged:                            # not yet in a store (a queued write
                sender.log_epoch(m.epoch, m.logged())            # died with the worker): no gap
            if m.epoch not in reported:
                with store_calls(OPTUNA):
                    trial.report(m.val_accuracy, m.epoch)
    spent["setup_seconds"] = time.perf_counter() - entered  # the study, the attempt's attributes, a checkpoint
    with device_memory() as memory, checkpoints.saver(uri, task.run_id, task.stores.artifacts) as save:
        result = run_trial(task.config, data, report, resume, save)
    result.metrics.update(memory)
    result.metrics.update(spent)
    sender.flush()  # every epoch logged, or the budget spent: never a silent gap
    status, reason = (Status.FAILED, sender.failure) if sender.failure else (result.status, result.reason)
    return finish_trial(study, uri, task.run_id, task.number, status, reason, result.metrics,
                        result.value, close_run=sender.close_run)


@contextlib.contextmanager
def device_memory():
    """GPU memory around one trial, as final metrics: the peak, and what is still allocated once
    the trial's tensors are gone (the data's device copy, kept for the next trial). A worker
    process runs many trials, so the second must not grow from trial to trial
    (tests/test_gpu_slot.py). On a CPU it measures nothing."""
    import torch

    memory: dict[str, float] = {}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # an earlier trial's peak is not this one's
        torch.cuda.reset_peak_memory_stats()
    yield memory
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()  # cached blocks back to the device: other processes may share it
        memory.update(cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20,
                      cuda_allocated_after_mb=torch.cuda.memory_allocated() / 2**20)
