"""What runs on a Ray worker: one Optuna trial, reported per epoch to Optuna and MLflow.

The worker reports each epoch's validation accuracy to the trial (so the study's pruner decides
with every other trial's history) and queues the epoch for the trial's MLflow run in one batch
(``mlflow_sender``: sent in the background, so a tracking server that is away for a while never
stalls training; past ``tracking_retry_s`` the trial fails with the epochs it could not log).
At the end it finishes the trial through ``finish.finish_trial``: Optuna first, then the run. Just
before, the trial's evaluation curve (``core.target``) becomes its ``eval_curve`` attribute, and
with a ``target_accuracy`` the run is tagged with whether and when the trial reached it.

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

from optim import declared
from sweep.core import credentials
from sweep.core.config import TrialConfig
from sweep.core.errors import StoreUnavailable, store_calls
from sweep.core.keys import MIRRORED, Attr, Tag
from sweep.core.outcome import Status, TrialOutcome
from sweep.core.records import EpochMetrics, PruneTrial, TrialResult
from sweep.core.target import described
from sweep.stores import checkpoints, tracking
from sweep.stores.finish import MLFLOW, OPTUNA, close_from_record, finish_trial
from sweep.stores.mlflow_sender import SHORT_REQUESTS, TrackingSender
from sweep.stores.studies import SweepStudy
from sweep.stores.sweepdir import Stores


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
    sent_at: float = 0.0  # when the driver handed it to Ray (time.time()); 0: not stamped


def this_node() -> dict[str, str]:
    """The Ray node running this attempt (recorded per attempt: a retry may run elsewhere)."""
    import ray

    context = ray.get_runtime_context()
    return {Attr.NODE_ID: context.get_node_id(), Attr.NODE_ADDRESS: ray.util.get_node_ip_address()}


def install_declared(config: TrialConfig) -> None:
    """A user's optimizer reaches this worker inside its trial: register it before anything looks it up."""
    if config.custom_optimizer is not None:
        declared.register(config.custom_optimizer)


def execute(task: TrialTask, data) -> TrialOutcome:
    """Run the trial with the driver's credentials in this process's environment for its duration
    (a worker on another node has none of its own), its MLflow writes through a sender that rides
    out a tracking-server outage. A store error leaves without its cause: the cause's text may hold
    a URL, and Ray keeps a failed task's traceback in its GCS."""
    install_declared(task.config)
    with credentials.environment({**task.credentials, **SHORT_REQUESTS}):
        try:
            with TrackingSender(task.stores.tracking_uri, task.run_id, task.config.tracking_retry_s) as sender:
                return run_attempt(task, data, sender)
        except StoreUnavailable as exc:
            raise StoreUnavailable(exc.store, exc.detail) from None


class Attempt:
    """This process's attempt at one trial: its live Optuna trial (the attempt counted and its
    node recorded), its MLflow sender, the epochs an earlier attempt already recorded in each
    store, and ``report``, the trial's per-epoch reporter. A solo trial and a pack member alike."""

    def __init__(
        self,
        task: TrialTask,
        study: SweepStudy,
        earlier,
        sender: TrackingSender,
        node: dict[str, str],
        tags: dict[str, str] | None = None,
        entered: float | None = None,
    ):
        self.task, self.study, self.sender = task, study, sender
        self.entered = time.perf_counter() if entered is None else entered  # setup_seconds count from here
        with store_calls(OPTUNA):
            self.trial = study.live_trial(task.number)
            self.number = int(earlier.user_attrs.get(Attr.ATTEMPT, 0)) + 1
            self.trial.set_user_attr(Attr.ATTEMPT, self.number)
            self.trial.set_user_attr(Attr.WORKER, f"{socket.gethostname()}:{os.getpid()}")
            for name, value in {**node, **(tags or {})}.items():
                self.trial.set_user_attr(name, value)
        sender.tag({MIRRORED[name]: value for name, value in {**node, **(tags or {})}.items()})
        # epochs an attempt whose worker died already recorded, in each store (it may have died between)
        self.reported = set(earlier.intermediate_values)
        with store_calls(MLFLOW):
            uri = task.stores.tracking_uri
            self.logged = sender.call(lambda: tracking.logged_steps(uri, task.run_id)) if self.number > 1 else set()
        self.spent = {"report_seconds": 0.0}  # the per-epoch store calls, inside the trial's own time
        self.checkpoints: checkpoints.saver | None = None  # ``saver()``'s, once training starts
        self.no_checkpoint_recorded = False
        if task.sent_at:  # from the driver's hand-off to Ray to this attempt's start (wall clocks)
            began = time.time() - (time.perf_counter() - self.entered)
            self.spent["queued_seconds"] = max(0.0, began - task.sent_at)

    def report(self, m: EpochMetrics) -> None:
        reporting = time.perf_counter()
        try:
            self._report(m)
        finally:
            self.spent["report_seconds"] += time.perf_counter() - reporting

    def _report(self, m: EpochMetrics) -> None:
        self.record_no_checkpoint()
        if m.epoch not in self.logged:
            self.sender.log_epoch(m.epoch, m.logged())
        self.sender.catch_up()  # MLflow before Optuna while MLflow answers; no wait during an outage
        self.sender.check()  # MLflow away past tracking_retry_s: the trial fails (a store error stops the sweep)
        with store_calls(OPTUNA):
            if m.epoch not in self.reported:
                self.study.report(self.trial, m.val_accuracy, m.epoch)
            prune = self.study.should_prune(self.trial)
        if prune:
            raise PruneTrial(f"pruned after epoch {m.epoch} (val accuracy {m.val_accuracy:.4f})")

    def resume(self):
        """The checkpoint a re-run goes on from (None: the first attempt, or none stored); the
        epochs it holds are recorded in any store that lacks them (a queued write may have died
        with the worker), so no step is left without its value."""
        if self.number == 1:
            return None
        task, sender = self.task, self.sender
        resume = checkpoints.load_latest(task.stores.tracking_uri, task.run_id, task.stores.artifacts)
        resumed_from = resume.epoch if resume is not None else 0  # 0: none stored, trains from the start
        with store_calls(OPTUNA):
            self.trial.set_user_attr(Attr.RESUMED_FROM, resumed_from)
        sender.tag({MIRRORED[Attr.RESUMED_FROM]: resumed_from})
        for m in resume.history if resume is not None else ():
            if m.epoch not in self.logged:
                sender.log_epoch(m.epoch, m.logged())
            if m.epoch not in self.reported:
                with store_calls(OPTUNA):
                    self.study.report(self.trial, m.val_accuracy, m.epoch)
        return resume

    def saver(self) -> checkpoints.saver:
        self.checkpoints = checkpoints.saver(
            self.task.stores.tracking_uri, self.task.run_id, self.task.stores.artifacts
        )
        return self.checkpoints

    def record_no_checkpoint(self) -> None:
        """The first checkpoint of the attempt that could not be stored, recorded on the trial and
        its run once, as soon as it is known (the next epoch, or the end): the driver sees it there
        and says it on the terminal, which this process's stderr does not reach."""
        failure = self.checkpoints.failed() if self.checkpoints is not None else None
        if failure is None or self.no_checkpoint_recorded:
            return
        self.no_checkpoint_recorded = True
        failure = credentials.redact(failure, self.task.stores.tracking_uri)
        with store_calls(OPTUNA):
            self.trial.set_user_attr(Attr.NO_CHECKPOINT, failure)
        self.sender.tag({MIRRORED[Attr.NO_CHECKPOINT]: failure})

    def finish(self, result, memory: dict[str, float]) -> TrialOutcome:
        """Record the result: every epoch logged first (or the budget spent: never a silent gap),
        then Optuna, then the run."""
        result.metrics.update(memory)
        result.metrics.update(self.spent)
        self.record_no_checkpoint()
        self.record_curve(result)
        self.sender.flush()
        failure = self.sender.failure
        status, reason = (Status.FAILED, failure) if failure else (result.status, result.reason)
        return finish_trial(
            self.study,
            self.task.stores.tracking_uri,
            self.task.run_id,
            self.task.number,
            status,
            reason,
            result.metrics,
            result.value,
            close_run=self.sender.close_run,
        )

    def record_curve(self, result: TrialResult) -> None:
        """The curve as the trial's attribute, set before the trial is finished (so a finished trial
        has it), and with a target the run's tag saying whether and when it was reached."""
        with store_calls(OPTUNA):
            self.trial.set_user_attr(Attr.CURVE, [p.as_list() for p in result.curve])
        target = self.task.config.target_accuracy
        if target is not None:
            self.sender.tag({Tag.TARGET: described(result.curve, target, result.epochs_run)})


def load_study(task: TrialTask) -> SweepStudy:
    """The task's study; shared with ``pack_worker``, which loads it once for all of a pack's members."""
    with store_calls(OPTUNA):
        return SweepStudy.load(task.stores.storage, task.study_name, task.pruner, task.config.epochs)


def run_attempt(task: TrialTask, data, sender: TrackingSender, tags: dict[str, str] | None = None) -> TrialOutcome:
    """One attempt at a solo trial, its MLflow writes through ``sender``; shared with ``pack_worker``,
    which runs a member solo through it when its pack could not train it (``tags`` say why)."""
    import torch

    from sweep.train.solo import run_trial  # torch: imported here, so the driver never does

    entered = time.perf_counter()
    torch.set_num_threads(max(1, task.threads))
    study = load_study(task)
    with store_calls(OPTUNA):
        earlier = study.record(task.number)
    if earlier.state.is_finished():  # told by an attempt whose worker died right after
        return close_from_record(study, task.stores.tracking_uri, task.run_id, task.number, close_run=sender.close_run)
    attempt = Attempt(task, study, earlier, sender, this_node(), tags, entered)
    resume = attempt.resume()
    attempt.spent["setup_seconds"] = time.perf_counter() - attempt.entered  # the study, attributes, a checkpoint
    with device_memory() as memory, attempt.saver() as save:
        result = run_trial(task.config, data, attempt.report, resume, save)
    return attempt.finish(result, memory)


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
        memory.update(
            cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20,
            cuda_allocated_after_mb=torch.cuda.memory_allocated() / 2**20,
        )
