"""The sweep driver: one Optuna study per optimizer, trials on Ray workers, MLflow for every trial.

Flow: config -> studies (source of truth) -> ask -> trial on a Ray worker -> per-epoch reports to
Optuna (pruning) and MLflow -> the worker finishes the trial. The driver asks, keeps ``workers``
tasks in flight, and repairs what a dead driver left (``recovery``). Its loop runs in named
phases: ``refill`` free slots, ``prepare_ahead`` the next trial, ``tidy`` checkpoints, ``wait``
for a task, ``refill`` the slots it freed, ``collect`` its outcomes (a dead pack's members
``recover`` as solo tasks); ``launch`` starts it.

A trial's store calls before it runs (ask, its MLflow run, its attributes: tens of milliseconds)
are made while the workers train: ``PREPARED_AHEAD`` solo trials wait ready, so a worker that
frees gets its next trial with no store call in between. Such a trial is RUNNING in Optuna from
then on (a sampler sees it as one more worker's), and a driver that dies leaves it interrupted
like the trials in flight: the next start queues it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from sweep.core import credentials
from sweep.core.config import AUTO, SweepConfig
from sweep.core.datasets import DataSplits
from sweep.core.errors import StoreUnavailable, first_line, store_calls
from sweep.core.keys import Attr, Tag
from sweep.core.outcome import Status, Tally, TrialOutcome
from sweep.execution import best_model
from sweep.execution.lanes import InFlight, Lane, Running, say
from sweep.execution.pack_worker import PackTask, execute_pack
from sweep.execution.progress import Progress
from sweep.execution.recovery import Recovery
from sweep.execution.search import chosen_hyperparameters, run_params, sample_trial
from sweep.execution.worker import TrialTask, execute
from sweep.report import build as report
from sweep.stores import checkpoints, reeval, tracking
from sweep.stores.finish import MLFLOW, finish_trial, optuna_calls
from sweep.stores.studies import SweepStudy, outcome_of
from sweep.stores.sweepdir import FINISHED, Stores, SweepDir
from sweep.stores.waiting import TrackingWatch, announce_slow_store

AUTO_PACK = 16  # pack=auto asks this many trials per task; the worker splits what its device cannot hold
PREPARED_AHEAD = 1  # solo trials asked (their runs open) while every slot is busy, for the next slot that frees


@dataclass(frozen=True)
class RemoteTasks:
    """The Ray tasks a sweep sends, declared once, and the data they share."""

    solo: Any
    pack: Any
    after_pack: Any  # a dead pack's member, going on solo with the retries the pack left it
    data_ref: Any

    @classmethod
    def declare(cls, cfg: SweepConfig, data: DataSplits) -> RemoteTasks:
        import ray

        resources = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
        # max_calls=0: a worker process runs trial after trial (its imports, CUDA context and the
        # data's device copy paid once); Ray's default for a GPU task is a fresh process per call.
        # A pack's resources serve the whole pack. Ray never re-runs a pack: when its worker dies,
        # its unfinished members go on as solo tasks (``collect``), each with the retries left.
        return cls(
            ray.remote(**resources, max_retries=cfg.max_retries, max_calls=0)(execute),
            ray.remote(**resources, max_retries=0, max_calls=0)(execute_pack),
            ray.remote(**resources, max_retries=max(0, cfg.max_retries - 1), max_calls=0)(execute),
            ray.put(data),
        )  # once per sweep; Ray ships it once per node


@dataclass
class Loop:
    """The loop's state: the tallies per optimizer, the tasks in flight by Ray reference, the solo
    trials prepared ahead (asked, counted as running, not yet sent), and the searches with newly
    finished trials whose checkpoints await tidying."""

    tasks: RemoteTasks
    tallies: dict[str, Tally]
    progress: Progress | None = None
    in_flight: dict[Any, InFlight] = field(default_factory=dict)
    ready: list[tuple[Lane, TrialTask]] = field(default_factory=list)
    untidy: dict[str, Lane] = field(default_factory=dict)
    no_checkpoint: set[tuple[str, int]] = field(default_factory=set)  # (study, trial) said to lack one
    next_look: float = 0.0  # time.monotonic() of the next look for checkpoints the running trials lack


class Driver:
    def __init__(self, cfg: SweepConfig, stores: Stores, sweep_dir: SweepDir, data: DataSplits, sweep_id: str):
        self.cfg, self.stores, self.sweep_dir, self.data = cfg, stores, sweep_dir, data
        self.watch = TrackingWatch(stores.tracking_uri)
        self.credentials = credentials.from_environment()  # for workers on nodes without them
        self.storage_name = f"the Optuna storage {credentials.redacted(stores.storage)}"
        with self._tracking_calls():
            self.tracker = tracking.SweepTracker(
                stores.tracking_uri, cfg.name, sweep_dir.artifacts if stores.local_tracking else None, sweep_id
            )
            self.tracker.keep_config(sweep_dir.config_text(cfg.to_dict()))
        self.retention = checkpoints.Retention(stores.tracking_uri, cfg.keep_checkpoints, stores.artifacts)
        self.studies: dict[str, SweepStudy] = {}
        self.reevals: dict[str, SweepStudy] = {}  # empty with reeval_seeds=0
        self.parents: dict[str, str] = {}
        for opt in cfg.optimizers:
            self._open(opt, sweep_id)
        self.reeval_waiting = {opt: 0 for opt in self.reevals}  # queued, not yet handed to a worker
        self.reeval_running = {opt: 0 for opt in self.reevals}
        self.recovery = Recovery(cfg, stores, self.tracker, self.parents, self._tracking_calls)
        # per study, how many trials it held once repaired: a trial numbered past them was asked by
        # this driver, so it has no MLflow run yet (recovery set aside any run of such a number)
        self.known: dict[str, int] = {}

    def _open(self, opt: str, sweep_id: str) -> None:
        """The optimizer's studies (search and re-evaluation) and its parent run, linked both ways."""
        cfg, stores = self.cfg, self.stores
        with announce_slow_store(self.storage_name, self.stores.storage), optuna_calls():
            study = SweepStudy.open(
                stores.storage,
                cfg.name,
                opt,
                sweep_id,
                sampler=cfg.sampler,
                pruner=cfg.pruner,
                seed=cfg.seed,
                trials=cfg.trials,
                epochs=cfg.epochs,
                objectives=cfg.objectives,
            )
            if cfg.reeval_seeds:
                self.reevals[opt] = SweepStudy.open_reeval(stores.storage, cfg.name, opt, sweep_id)
        with self._tracking_calls():
            self.parents[opt] = self.tracker.parent_run(opt, self._fixed_params())
        with optuna_calls():
            study.set_attr(Attr.MLFLOW_RUN, self.parents[opt])
            study.set_attr(Attr.TRAIN_IMAGES, len(self.data.train_x))  # the report's steps per epoch
        self.studies[opt] = study

    def _fixed_params(self) -> dict[str, Any]:
        """What every trial of the sweep shares, logged on each parent run."""
        cfg = self.cfg
        fixed = {
            k: getattr(cfg, k)
            for k in ("dataset", "model", "epochs", "batch_size", "sampler", "pruner", "trials", "seed", "reeval_seeds")
        }
        if cfg.batch_sizes:  # searched: each trial's run has its own
            fixed["batch_size"] = list(cfg.batch_sizes)
        if cfg.train_subset is not None:
            fixed["train_subset"] = cfg.train_subset
        return fixed

    def lanes(self) -> list[Lane]:
        return [Lane(opt, study, tracking.TRIAL_ROLE) for opt, study in self.studies.items()] + [
            Lane(opt, study, tracking.REEVAL_ROLE) for opt, study in self.reevals.items()
        ]

    @contextlib.contextmanager
    def _tracking_calls(self):
        """The driver's own MLflow calls: said when slow, and an error (a server gone, a full disk)
        stops the sweep as StoreUnavailable like the workers' calls do."""
        with self.watch.call(), store_calls(MLFLOW):
            yield

    # ---- re-evaluation ----
    def queue_reevals(self, opt: str) -> None:
        """Once the optimizer's search is done: queue the re-evaluations its best configurations
        still lack (``reeval.plan``), and count what waits."""
        study = self.reevals.get(opt)
        if study is None:
            return
        with optuna_calls():
            planned = reeval.plan(self.studies[opt], study, self.cfg.seed, self.cfg.reeval_seeds, self.cfg.reeval_top)
            for item in planned:
                reeval.enqueue(study, item)
            self.reeval_waiting[opt] = study.waiting()
        if planned:
            sources = sorted({p.source.number for p in planned})
            say(
                opt,
                f"re-evaluating trial{'s' if len(sources) > 1 else ''} {', '.join(map(str, sources))} "
                f"with {len(planned)} further seed run{'s' if len(planned) > 1 else ''}",
            )

    def log_best_model(self, opt: str) -> None:
        """Log the optimizer's best re-evaluated model (once; a resumed driver finds it logged)."""
        study = self.reevals.get(opt)
        if study is None:
            return
        with optuna_calls():
            run_id = reeval.reported(self.studies[opt], study, self.cfg.reeval_top).model_run
        if run_id is None:
            return
        with self._tracking_calls():
            uri = best_model.log(self.stores, run_id, self.cfg.model, self.data, self.cfg.epochs)
        if uri:
            say(opt, f"best re-evaluated model: {uri}")

    def next_lane(self, tallies: dict[str, Tally]) -> Lane | None:
        """The search first (the optimizer with the fewest trials done or running, so budgets fill
        evenly), then the queued re-evaluations."""
        candidates = [o for o, t in tallies.items() if t.done + t.running < t.budget]
        if candidates:
            opt = min(candidates, key=lambda o: tallies[o].done + tallies[o].running)
            return Lane(opt, self.studies[opt], tracking.TRIAL_ROLE)
        waiting = [o for o, n in self.reeval_waiting.items() if n > 0]
        if waiting:
            opt = min(waiting, key=lambda o: self.reeval_running[o])
            return Lane(opt, self.reevals[opt], tracking.REEVAL_ROLE)
        return None

    # ---- the loop ----
    def run(self) -> None:
        """Repair, then run every lane's trials to its budget, then close what is left open."""
        import ray

        for lane in self.lanes():
            self.known[lane.study.name] = self.recovery.recover(lane)
        self.recovery.close_finished_runs(self.studies, self.reevals)
        loop = Loop(
            RemoteTasks.declare(self.cfg, self.data),
            {opt: Tally.of(self.cfg.trials, study.outcomes()) for opt, study in self.studies.items()},
            next_look=time.monotonic() + self.watch.poll_s,
        )
        for opt, tally in loop.tallies.items():
            if tally.done >= tally.budget:
                self.queue_reevals(opt)
        try:
            with Progress(loop.tallies) as loop.progress:
                while True:
                    self.refill(loop)
                    self.prepare_ahead(loop)
                    self.tidy(loop)
                    self.look_for_missing_checkpoints(loop)
                    if not loop.in_flight:
                        break
                    done = [(ref, loop.in_flight.pop(ref)) for ref in self.wait(loop)]
                    self.refill(loop)  # the freed slots first: their next trials go before the collect's store calls
                    for ref, flight in done:
                        self.collect_task(loop, ref, flight)
        except BaseException:
            for ref in loop.in_flight:  # their trials stay RUNNING: the next start queues them again
                ray.cancel(ref, force=True)
            raise
        self.finish()

    def refill(self, loop: Loop) -> None:
        """Hand free slots their next trials: those prepared ahead first (no store call between a
        worker freeing and its next trial), then the next lane's trial, or pack of trials."""
        while len(loop.in_flight) < self.cfg.workers:
            if loop.ready:
                self.send(loop, *loop.ready.pop(0))
                continue
            lane = self.next_lane(loop.tallies)
            if lane is None:
                return
            size = 1 if lane.is_reeval else self.pack_size(loop.tallies[lane.optimizer])
            if size == 1:
                self.send(loop, lane, self.take(loop, lane))
                continue
            pack = self.prepare_pack(lane, size)
            self.started(loop, lane, size)
            sent = time.time()
            pack = dataclasses.replace(pack, members=tuple(dataclasses.replace(m, sent_at=sent) for m in pack.members))
            ref = loop.tasks.pack.remote(pack, loop.tasks.data_ref)
            loop.in_flight[ref] = self.flight(lane, *pack.members, pack=pack)

    def prepare_ahead(self, loop: Loop) -> None:
        """While every slot is busy, prepare the next ``PREPARED_AHEAD`` solo trials (asked, their
        runs open) for the slots that free next. A lane that packs is not prepared ahead: the
        size of its next pack depends on the budget left when a slot frees."""
        while len(loop.in_flight) >= self.cfg.workers and len(loop.ready) < PREPARED_AHEAD:
            lane = self.next_lane(loop.tallies)
            if lane is None or (not lane.is_reeval and self.pack_size(loop.tallies[lane.optimizer]) > 1):
                return
            loop.ready.append((lane, self.take(loop, lane)))

    def take(self, loop: Loop, lane: Lane) -> TrialTask:
        """The lane's next solo trial, prepared and counted as running (Optuna has it RUNNING)."""
        task = self.prepare_trial(lane)
        self.started(loop, lane, 1)
        return task

    def started(self, loop: Loop, lane: Lane, trials: int) -> None:
        """Count ``trials`` just asked of the lane as running (so ``next_lane`` fills budgets evenly)."""
        if lane.is_reeval:
            self.reeval_waiting[lane.optimizer] -= trials
            self.reeval_running[lane.optimizer] += trials
        else:
            for _ in range(trials):
                loop.progress.started(lane.optimizer)

    def send(self, loop: Loop, lane: Lane, task: TrialTask) -> None:
        """Hand a prepared solo trial to Ray, stamped with when (the worker's ``queued_seconds``)."""
        task = dataclasses.replace(task, sent_at=time.time())
        loop.in_flight[loop.tasks.solo.remote(task, loop.tasks.data_ref)] = self.flight(lane, task)

    @staticmethod
    def flight(lane: Lane, *tasks: TrialTask, pack: PackTask | None = None) -> InFlight:
        return InFlight(lane, tuple(Running(t.number, t.run_id) for t in tasks), pack)

    def tidy(self, loop: Loop) -> None:
        """Delete the checkpoints the newly finished trials no longer need; after the refill, so
        no worker waits for the deletes."""
        for lane in loop.untidy.values():
            self.tidy_checkpoints(lane)
        loop.untidy.clear()

    def look_for_missing_checkpoints(self, loop: Loop) -> None:
        """Every ``poll_s``, the running trials that could not store a checkpoint (their worker
        records it on the trial), each said once, while it trains: a full disk is news now, not
        at the end of the sweep. One read of each study with trials in flight."""
        now = time.monotonic()
        if now < loop.next_look:
            return
        loop.next_look = now + self.watch.poll_s
        running: dict[str, tuple[Lane, set[int]]] = {}
        for flight in loop.in_flight.values():
            running.setdefault(flight.lane.study.name, (flight.lane, set()))[1].update(t.number for t in flight.trials)
        for lane, numbers in running.values():
            with optuna_calls():
                trials = lane.study.running()
            for t in trials:
                if t.number in numbers and t.user_attrs.get(Attr.NO_CHECKPOINT):
                    self.say_no_checkpoint(loop, lane, t.number, str(t.user_attrs[Attr.NO_CHECKPOINT]))

    @staticmethod
    def say_no_checkpoint(loop: Loop, lane: Lane, number: int, failure: str) -> None:
        """One line per trial, at its first checkpoint that could not be stored (later ones are
        not said again: the trial's record keeps the first)."""
        if (lane.study.name, number) in loop.no_checkpoint:
            return
        loop.no_checkpoint.add((lane.study.name, number))
        trial = f"re-evaluation trial {number}" if lane.is_reeval else f"trial {number}"
        loop.progress.note(lane.optimizer, f"{trial}: could not store its checkpoint ({failure}); training goes on")

    def wait(self, loop: Loop) -> list:
        """The tasks done within the tracking watch's poll; none means it checks the tracking server."""
        import ray

        ready, _ = ray.wait(list(loop.in_flight), num_returns=1, timeout=self.watch.poll_s)
        if not ready:
            self.watch.check()
        return ready

    def collect_task(self, loop: Loop, ref, flight: InFlight) -> None:
        """Count a finished task's outcomes; a dead pack's unfinished members go on solo (still
        running, so counted as such); a search that is done queues its re-evaluations."""
        lane, opt = flight.lane, flight.lane.optimizer
        outcomes, go_on_solo = self.collect(ref, flight)
        for member in go_on_solo:
            loop.in_flight[loop.tasks.after_pack.remote(member, loop.tasks.data_ref)] = self.flight(lane, member)
        for number, outcome in outcomes:
            if outcome.no_checkpoint:  # a trial that ended before the next look
                self.say_no_checkpoint(loop, lane, number, outcome.no_checkpoint)
            if lane.is_reeval:
                self.reeval_running[opt] -= 1
                with optuna_calls():
                    loop.progress.note(opt, reeval_line(lane.study, number, outcome))
            else:
                loop.progress.finished(opt, outcome)
        if not lane.is_reeval:
            tally = loop.tallies[opt]
            if tally.done >= tally.budget and tally.running == 0:
                self.queue_reevals(opt)
            loop.untidy[opt] = lane

    def finish(self) -> None:
        """Once nothing is in flight: close runs a dead process left open, log the best models,
        and tidy the checkpoints of trials finished under an earlier driver and the re-evaluations."""
        self.recovery.close_finished_runs(self.studies, self.reevals)
        for opt in self.cfg.optimizers:
            self.log_best_model(opt)
        for lane in self.lanes():
            self.tidy_checkpoints(lane)

    def report(self) -> report.Built:
        """The finished sweep's report. A tracking store that fails meanwhile stops it like any
        driver call; `sweep resume` then builds it (nothing is left to train)."""
        with self.watch.call():
            return report.build(
                self.cfg, self.stores, self.sweep_dir, FINISHED, self.tracker, figures=self.cfg.report_figures
            )

    def tidy_checkpoints(self, lane: Lane) -> None:
        """Delete the checkpoints of finished trials but the one worth keeping (all kept with
        ``keep_checkpoints``): the search's best trial, and the re-evaluation whose model is the
        optimizer's best. The search is tidied after each trial is collected, so the disk holds
        one checkpoint per running trial and per optimizer, not one per trial until the sweep
        ends; re-evaluations only once all have finished (until then the best may change). The
        pass at the end catches what a dead driver left. Optuna says which trials are finished
        and best."""
        with optuna_calls():
            trials = lane.study.trials()
            if lane.is_reeval:
                keep = reeval.reported(self.studies[lane.optimizer], lane.study, self.cfg.reeval_top).model_trial
        finished = [(t, o) for t in trials if (o := outcome_of(t)) is not None and Attr.MLFLOW_RUN in t.user_attrs]
        if not lane.is_reeval:
            keep = Tally.of(0, (o for _, o in finished)).best_number
        with self.watch.call():  # deletes are best effort, but a slow server is said, not silent
            self.retention.tidy({t.number: t.user_attrs[Attr.MLFLOW_RUN] for t, _ in finished}, keep)

    def pack_size(self, tally: Tally) -> int:
        """How many of the optimizer's trials the next task trains together: ``pack`` (or
        ``AUTO_PACK``), no more than its budget has left."""
        wanted = AUTO_PACK if self.cfg.pack == AUTO else self.cfg.pack
        return max(1, min(wanted, tally.budget - tally.done - tally.running))

    def prepare_pack(self, lane: Lane, size: int) -> PackTask:
        """Ask ``size`` trials in a row (TPE's constant liar keeps them apart), to run as one pack."""
        share = self.cfg.num_gpus if 0 < self.cfg.num_gpus < 1 else 1.0
        return PackTask(tuple(self.prepare_trial(lane) for _ in range(size)), device_share=share)

    def prepare_trial(self, lane: Lane) -> TrialTask:
        """Ask the lane's study for a trial and open its run: the task a worker runs."""
        opt, study, cfg = lane.optimizer, lane.study, self.cfg
        with announce_slow_store(self.storage_name, self.stores.storage), optuna_calls():
            trial = study.ask()
            tc = sample_trial(trial, opt, cfg)  # a re-evaluation's parameters were enqueued: nothing is drawn
        extra: dict[str, str] = {}
        if lane.is_reeval:
            source, seed = reeval.key_of(trial)
            # a different seed (init, batch order) on the sweep's split; its last epoch always
            # checkpointed: the model logged is rebuilt from it
            tc = dataclasses.replace(tc, seed=seed, checkpoint_every=cfg.checkpoint_every or cfg.epochs)
            extra = {Tag.SOURCE_TRIAL: str(source), Tag.REEVAL_SEED: str(seed)}
        with self._tracking_calls():
            run_id = self.tracker.trial_run(
                self.parents[opt],
                opt,
                trial.number,
                run_params(tc, trial.params),
                role=lane.role,
                retry_of=trial.user_attrs.get(Attr.RETRY_OF),
                extra_tags=extra,
                run_name=f"{opt}-reeval-{extra[Tag.SOURCE_TRIAL]}-seed{seed}" if lane.is_reeval else None,
                new=trial.number >= self.known.get(study.name, trial.number + 1),
            )
        with optuna_calls():
            trial.set_user_attr(Attr.MLFLOW_RUN, run_id)
            trial.set_user_attr(Attr.HYPERPARAMETERS, chosen_hyperparameters(tc, cfg))
        return TrialTask(
            self.stores,
            study.name,
            trial.number,
            run_id,
            "none" if lane.is_reeval else cfg.pruner,
            tc,
            threads=max(1, int(cfg.num_cpus)),
            credentials=self.credentials,
        )

    def collect(self, ref, flight: InFlight) -> tuple[list[tuple[int, TrialOutcome]], list[TrialTask]]:
        """The task's outcomes as (trial number, outcome), and the members of a pack whose worker
        died that go on solo (the driver sends them). A store that failed in the worker stops the
        sweep; a worker that died past Ray's retries, or raised, makes its trials FAILED."""
        import ray

        try:
            got = ray.get(ref)
            return list(zip((t.number for t in flight.trials), got if isinstance(got, list) else [got])), []
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, StoreUnavailable):
                raise StoreUnavailable(cause.store, cause.detail) from None
            if isinstance(exc, StoreUnavailable):
                raise StoreUnavailable(exc.store, exc.detail) from None
            if flight.pack is not None and self.cfg.max_retries and not isinstance(exc, ray.exceptions.RayTaskError):
                return self.recovery.after_pack_died(flight.lane, flight.pack)
            if cause is not None and not isinstance(exc, ray.exceptions.WorkerCrashedError):
                reason = f"worker error: {first_line(cause)}"
            else:  # Ray's own message ends with what happened to the worker
                reason = f"worker error: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            with self._tracking_calls():
                return [
                    (
                        t.number,
                        finish_trial(
                            flight.lane.study, self.stores.tracking_uri, t.run_id, t.number, Status.FAILED, reason
                        ),
                    )
                    for t in flight.trials
                ], []


def reeval_line(study: SweepStudy, number: int, outcome: TrialOutcome) -> str:
    """One line per finished re-evaluation."""
    source, seed = reeval.key_of(study.record(number)) or (None, None)
    test = outcome.metrics.get("test_accuracy")
    shown = f" test_acc={test:.4f}" if test is not None else f" ({outcome.reason})" if outcome.reason else ""
    return f"re-evaluation of trial {source} seed {seed}: {outcome.status.value}{shown}"
