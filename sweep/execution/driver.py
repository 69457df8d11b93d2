"""The sweep driver: one Optuna study per optimizer, trials on Ray workers, MLflow for every trial.

Flow: config -> studies (source of truth) -> ask -> trial on a Ray worker -> per-epoch reports to
Optuna (pruning) and MLflow -> the worker finishes the trial. The driver asks, keeps ``workers``
trials in flight, and repairs what a dead driver left: trials left RUNNING are finished as
``interrupted`` and queued again with the same parameters, each with its own MLflow run.

The engine raises and the CLI decides exit codes: ``ConfigError`` (bad input, nothing written),
``StoreUnavailable`` (a store went away mid-sweep or the disk is full; finished trials are kept),
``Stopped`` (Ctrl-C or SIGTERM), or anything unexpected.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any

from sweep.core import credentials

from sweep.execution import best_model, preflight

from sweep.report import build as report

from sweep.stores import checkpoints, reeval, tracking
from sweep.report.collect import TRAIN_IMAGES
from sweep.core.config import AUTO, FROZEN_KEYS, STORE_URL_KEYS, SweepConfig, saved_values
from sweep.core.datasets import DataSplits, load_data
from sweep.core.errors import ConfigError, DatasetUnavailable, Stopped, StoreUnavailable, first_line, store_calls
from sweep.stores.finish import MLFLOW, OPTUNA, close_from_record, finish_trial
from sweep.core.outcome import Status, Tally, TrialOutcome
from sweep.execution.progress import Progress
from sweep.execution.search import chosen_hyperparameters, run_params, sample_trial
from sweep.stores.studies import HYPERPARAMETERS, MLFLOW_RUN, RETRY_OF, SweepStudy, outcome_of
from sweep.stores.sweepdir import FINISHED, INTERRUPTED, RUNNING, Stores, SweepDir
from sweep.stores.waiting import TrackingWatch, announce_if_slow
from sweep.execution.pack_worker import PackTask, execute_pack
from sweep.execution.worker import TrialTask, execute

AUTO_PACK = 16  # pack=auto asks this many trials per task; the worker splits what its device cannot hold

INTERRUPTED_REASON = "interrupted: the driver stopped before the trial finished; queued again"


@dataclass(frozen=True)
class Prepared:
    """A sweep checked end to end, nothing written yet."""

    cfg: SweepConfig
    sweep_dir: SweepDir
    stores: Stores
    data: DataSplits
    seen_id: str | None  # the sweep's id when checked (None: a new sweep)


@dataclass(frozen=True)
class SweepResult:
    sweep_dir: SweepDir
    report: report.Built

    @property
    def rows(self) -> tuple:
        """The comparison's per-optimizer results, ranked."""
        return self.report.comparison.results


def check_resumable(cfg: SweepConfig, saved: dict[str, Any] | None) -> SweepConfig:
    """An existing sweep's saved config must agree on every frozen key, and keep its optimizers.
    Store URLs are compared without their passwords (a changed password resumes; the saved URL has
    none, so the password comes from the environment or from the URL given again); stores left
    unset take the saved ones."""
    if saved is None:
        return cfg
    saved = saved_values(saved)
    values = cfg.to_dict()
    for key in FROZEN_KEYS:
        if key in STORE_URL_KEYS and values[key] is None:
            cfg = cfg.replace(**{key: saved.get(key)})
        elif values[key] != saved.get(key):
            raise ConfigError(key, f"sweep {cfg.name!r} exists with {key}={saved.get(key)!r}, not {values[key]!r}; "
                                   f"resume with that value or pick a new name=")
    dropped = [opt for opt in saved["optimizers"] if opt not in cfg.optimizers]
    if dropped:
        raise ConfigError("optimizers", f"sweep {cfg.name!r} already has studies for {', '.join(dropped)}; "
                                        "keep them in optimizers= (you may add more)")
    return cfg


def prepare(cfg: SweepConfig) -> Prepared:
    """Check everything that can be wrong, writing nothing. Raises ConfigError."""
    sweep_dir = SweepDir.of(cfg.output_dir, cfg.name)
    if sweep_dir.is_locked():
        raise ConfigError("name", f"sweep {cfg.name!r} is being run by another driver "
                                  f"({sweep_dir.read_state()}); wait for it or stop it")
    cfg = check_resumable(cfg, sweep_dir.saved_config())
    seen_id = sweep_dir.read_id()
    stores = sweep_dir.stores(cfg.storage, cfg.tracking_uri)
    preflight.check_stores(cfg, stores)
    preflight.check_journal(stores)
    preflight.check_same_sweep(cfg.name, stores, seen_id or "new sweep")
    preflight.warn_local_stores_on_cluster(cfg, stores)
    try:
        data = load_data(cfg)
    except DatasetUnavailable as exc:
        raise ConfigError(exc.key, str(exc)) from None
    init_ray(cfg, stores)
    preflight.check_resources(cfg)
    warm_workers(cfg)
    return Prepared(cfg, sweep_dir, stores, data, seen_id)


def run_sweep(cfg: SweepConfig) -> SweepResult:
    return start(prepare(cfg))


def start(p: Prepared) -> SweepResult:
    """Claim the sweep (lock and id in one step), then drive it. A full disk under the sweep's
    own files (its directory, the journal's repair copy) stops it as StoreUnavailable, like a
    full disk under the stores does: it is not an unexpected error."""
    try:
        return _start(p)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreUnavailable(f"the disk under {p.sweep_dir.path}", first_line(exc)) from exc
        raise


def _start(p: Prepared) -> SweepResult:
    with p.sweep_dir.claim() as sweep_id:
        if sweep_id is None:
            raise ConfigError("name", f"sweep {p.cfg.name!r} was just started by another driver")
        cfg = p.cfg
        if sweep_id != p.seen_id:  # another driver created the sweep after our checks: check again
            cfg = check_resumable(cfg, p.sweep_dir.saved_config())
            preflight.check_same_sweep(cfg.name, p.stores, sweep_id)
        preflight.repair_journal(p.stores)
        p.sweep_dir.write_config(cfg.to_dict())
        p.sweep_dir.write_state(RUNNING)
        try:
            with stop_on_sigterm():
                driver = Driver(cfg, p.stores, p.sweep_dir, p.data, sweep_id)
                driver.run()
                built = driver.report()  # a sweep is finished once its report is built
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk must not hide why the sweep stopped
                p.sweep_dir.write_state(INTERRUPTED)
            raise
        p.sweep_dir.write_state(FINISHED)
    return SweepResult(p.sweep_dir, built)


class stop_on_sigterm:
    """While the sweep runs, SIGTERM stops it like Ctrl-C (Ray's own handler would abort the
    process with a stack dump and leave the sweep marked running)."""

    def __enter__(self):
        self.received: int | None = None
        # only the main thread may set a handler (and only it runs them): a sweep driven from
        # another thread (an embedding program, a test) leaves SIGTERM to that program
        self.installed = threading.current_thread() is threading.main_thread()

        def handler(signum, frame):
            self.received = signum
            raise Stopped(signum)

        if self.installed:
            self.previous = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, kind, exc, tb):
        if not self.installed:
            return False
        signal.signal(signal.SIGTERM, self.previous)
        if self.received is not None and isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Stopped):
            # Ray's blocking calls (ray.wait, ray.get) run the handler themselves and raise a bare
            # KeyboardInterrupt in place of its exception: say which signal it was
            raise Stopped(self.received) from None
        return False


KEEPALIVE = {"RAY_grpc_client_keepalive_time_ms": "10000", "RAY_grpc_client_keepalive_timeout_ms": "10000"}


def init_ray(cfg: SweepConfig, stores: Stores | None = None) -> None:
    """Start or join Ray. While ``ray.init`` waits for Ray's processes (seconds, mostly idle in
    this process), a thread imports what the driver imports next (``driver_imports``)."""
    import ray

    if ray.is_initialized():
        return
    prefetch = threading.Thread(target=_import_quietly, args=(driver_imports(stores),), name="sweep-prefetch",
                                daemon=True)
    prefetch.start()
    try:
        _ray_init(cfg)
    finally:
        prefetch.join()  # no import left racing the driver's own


def _ray_init(cfg: SweepConfig) -> None:
    import os

    import ray

    address = cfg.ray_address
    if address and address != "local":
        # gRPC keepalive: without it a trial pushed to a node whose link was cut is retried only
        # after TCP gives up (many minutes); with it, within seconds of Ray declaring the node dead
        # (tests/test_cluster.py). An environment that sets these wins.
        for name, value in KEEPALIVE.items():
            os.environ.setdefault(name, value)
        import models
        import optim
        import sweep

        # paths, not module objects: inside a Ray job (`sweep submit`) Ray deep-copies this
        # runtime_env to merge it with the job's, and a module object cannot be copied
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"py_modules": [os.path.dirname(m.__file__) for m in (sweep, models, optim)]})
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)


# Imported by the driver after Ray starts (Driver's tracker, the report), seconds on 2 cores; none
# of them is imported by ray.init itself, so the prefetch thread and ray.init do not contend for
# the same module locks.
SQL_TRACKING_IMPORTS = ("mlflow.store.tracking.sqlalchemy_store",)  # MLflow's SQL store: SQLAlchemy, alembic
REPORT_IMPORTS = ("sweep.report.files",)  # matplotlib


def driver_imports(stores: Stores | None) -> tuple[str, ...]:
    """What the driver will import once Ray is up: the SQL tracking store unless it talks to a server."""
    sql = stores is None or not credentials.is_server(stores.tracking_uri)
    return (SQL_TRACKING_IMPORTS if sql else ()) + REPORT_IMPORTS


def _import_quietly(names: tuple[str, ...]) -> None:
    """Import ahead of need; a failure is left for the real import to raise where it belongs."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a prefetch must never fail the sweep
            return


def warm_workers(cfg: SweepConfig) -> None:
    """On a local Ray, have the worker processes that will run the first trials import the trial's
    modules and build an optimizer (torch imports ``torch._dynamo`` then: seconds) while the driver
    opens its stores, instead of after the first trials were handed to them. Fire and forget: each
    task holds a trial's resources for a moment, so the trials find these processes idle and warm.
    Not on a cluster, whose nodes and placement are its own."""
    import ray

    if cfg.ray_address and cfg.ray_address != "local":
        return
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 0) // cfg.num_cpus)
    if cfg.num_gpus:
        slots = min(slots, int(total.get("GPU", 0) // cfg.num_gpus))
    warm = ray.remote(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_calls=0, max_retries=0)(_warm_up)
    for _ in range(min(cfg.workers, slots)):
        warm.remote()


def _warm_up() -> int:
    """Runs on a Ray worker: what the first trial in this process would otherwise pay for."""
    import os

    import torch

    import sweep.train.packed  # noqa: F401 - the trial loop (solo and packed): torch, the models, the optimizers
    import sweep.execution.worker  # noqa: F401 - its reporting: Optuna, MLflow

    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return os.getpid()


def _say(opt: str, text: str) -> None:
    print(f"[{opt:>9}] {text}", flush=True)


@dataclass(frozen=True)
class Lane:
    """One study the driver feeds: an optimizer's search, or its re-evaluation. The role names
    its runs in MLflow (``tracking.TRIAL_ROLE`` / ``REEVAL_ROLE``)."""

    optimizer: str
    study: SweepStudy
    role: str

    @property
    def is_reeval(self) -> bool:
        return self.role == tracking.REEVAL_ROLE


class Driver:
    def __init__(self, cfg: SweepConfig, stores: Stores, sweep_dir: SweepDir, data: DataSplits, sweep_id: str):
        self.cfg, self.stores, self.sweep_dir, self.data = cfg, stores, sweep_dir, data
        self.watch = TrackingWatch(stores.tracking_uri)
        self.credentials = credentials.from_environment()  # for workers on nodes without them
        self.storage_name = f"the Optuna storage {credentials.redacted(stores.storage)}"
        with self._tracking_calls():
            self.tracker = tracking.SweepTracker(stores.tracking_uri, cfg.name,
                                                 sweep_dir.artifacts if stores.local_tracking else None, sweep_id)
        fixed = {k: getattr(cfg, k) for k in ("dataset", "model", "epochs", "batch_size", "sampler", "pruner",
                                              "trials", "seed", "reeval_seeds")}
        if cfg.batch_sizes:  # searched: each trial's run has its own
            fixed["batch_size"] = list(cfg.batch_sizes)
        if cfg.train_subset is not None:
            fixed["train_subset"] = cfg.train_subset
        self.retention = checkpoints.Retention(stores.tracking_uri, cfg.keep_checkpoints, stores.artifacts)
        self.studies: dict[str, SweepStudy] = {}
        self.reevals: dict[str, SweepStudy] = {}  # empty with reeval_seeds=0
        self.parents: dict[str, str] = {}
        for opt in cfg.optimizers:
            with announce_if_slow(self.storage_name), _storage_calls():
                study = SweepStudy.open(stores.storage, cfg.name, opt, sweep_id, sampler=cfg.sampler,
                                        pruner=cfg.pruner, seed=cfg.seed, trials=cfg.trials, epochs=cfg.epochs)
                if cfg.reeval_seeds:
                    self.reevals[opt] = SweepStudy.open_reeval(stores.storage, cfg.name, opt, sweep_id)
            with self._tracking_calls():
                self.parents[opt] = self.tracker.parent_run(opt, fixed)
            with _storage_calls():
                study.set_attr(MLFLOW_RUN, self.parents[opt])
                study.set_attr(TRAIN_IMAGES, len(data.train_x))  # the report's steps per epoch
            self.studies[opt] = study
        self.reeval_waiting = {opt: 0 for opt in self.reevals}  # queued, not yet handed to a worker
        self.reeval_running = {opt: 0 for opt in self.reevals}

    def lanes(self) -> list[Lane]:
        return [Lane(opt, study, tracking.TRIAL_ROLE) for opt, study in self.studies.items()] + \
               [Lane(opt, study, tracking.REEVAL_ROLE) for opt, study in self.reevals.items()]

    @contextlib.contextmanager
    def _tracking_calls(self):
        """The driver's own MLflow calls: said when slow, and an error (a server gone, a full disk)
        stops the sweep as StoreUnavailable like the workers' calls do."""
        with self.watch.call(), store_calls(MLFLOW):
            yield

    # ---- repair ----
    def recover(self, lane: Lane) -> None:
        """Repair what a dead driver left: finish its RUNNING trials as interrupted (study first,
        then their runs, as everywhere) and queue each interrupted search trial again once (an
        interrupted re-evaluation is queued again by ``queue_reevals``). Every step can be
        repeated, and ``close_finished_runs`` closes a run this misses, so dying here is safe
        too. Runs of trials the study no longer has (a torn journal) are set aside."""
        opt, study = lane.optimizer, lane.study
        with _storage_calls():
            trials = study.trials()
        with self._tracking_calls():
            runs = self.tracker.trial_runs(opt, lane.role)
        for number, run_id in runs.items():
            if number >= len(trials):
                with self._tracking_calls():
                    self.tracker.orphan(run_id, "its trial was lost from the Optuna storage (torn journal)")
                _say(opt, f"{lane.role} {number}: its record was lost from the Optuna journal; "
                          "its MLflow run is kept, tagged sweep.orphaned, and the trial runs again")
        for t in trials:
            if t.state.name != "RUNNING":
                continue
            with self._tracking_calls():
                run_id = (t.user_attrs.get(MLFLOW_RUN) or runs.get(t.number)
                          or self.tracker.trial_run(self.parents[opt], opt, t.number, t.params, role=lane.role))
            # rewrite_run: a run already closed means the trial's tell was lost (torn journal)
            finish_trial(study, self.stores.tracking_uri, run_id, t.number, Status.INTERRUPTED, INTERRUPTED_REASON,
                         rewrite_run=True)
            _say(opt, f"{lane.role} {t.number} was interrupted: recorded as interrupted")
        if lane.is_reeval:
            return
        with _storage_calls():
            outcomes = study.outcomes()
            retried = {t.user_attrs.get(RETRY_OF) for t in study.trials()}
            room = self.cfg.trials - Tally.of(self.cfg.trials, outcomes).done - study.waiting()
            by_number = {t.number: t for t in study.trials()}
        for outcome in outcomes:
            if room > 0 and outcome.status == Status.INTERRUPTED and outcome.number not in retried:
                with _storage_calls():
                    study.enqueue_retry(by_number[outcome.number])
                room -= 1
                _say(opt, f"trial {outcome.number} queued again with the same parameters")

    def close_finished_runs(self) -> None:
        """Close trial and re-evaluation runs left RUNNING although Optuna has the trial's outcome
        (a process died between the two writes); Optuna is the source of truth."""
        with self._tracking_calls():
            running = self.tracker.running_trial_runs()
        for (role, opt, number), run_id in running.items():
            study = (self.reevals if role == tracking.REEVAL_ROLE else self.studies).get(opt)
            with _storage_calls():
                known = study is not None and number < len(study.trials())
            if known:
                close_from_record(study, self.stores.tracking_uri, run_id, number)

    # ---- re-evaluation ----
    def queue_reevals(self, opt: str) -> None:
        """Once the optimizer's search is done: queue the re-evaluations its best configurations
        still lack (``reeval.plan``), and count what waits."""
        study = self.reevals.get(opt)
        if study is None:
            return
        with _storage_calls():
            planned = reeval.plan(self.studies[opt], study, self.cfg.seed, self.cfg.reeval_seeds, self.cfg.reeval_top)
            for item in planned:
                reeval.enqueue(study, item)
            self.reeval_waiting[opt] = study.waiting()
        if planned:
            sources = sorted({p.source.number for p in planned})
            _say(opt, f"re-evaluating trial{'s' if len(sources) > 1 else ''} {', '.join(map(str, sources))} "
                      f"with {len(planned)} further seed run{'s' if len(planned) > 1 else ''}")

    def log_best_model(self, opt: str) -> None:
        """Log the optimizer's best re-evaluated model (once; a resumed driver finds it logged)."""
        study = self.reevals.get(opt)
        if study is None:
            return
        with _storage_calls():
            run_id = reeval.reported(self.studies[opt], study, self.cfg.reeval_top).model_run
        if run_id is None:
            return
        with self._tracking_calls():
            uri = best_model.log(self.stores, run_id, self.cfg.model, self.data, self.cfg.epochs)
        if uri:
            _say(opt, f"best re-evaluated model: {uri}")

    # ---- the loop ----
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

    def run(self) -> None:
        import ray

        cfg = self.cfg
        for lane in self.lanes():
            self.recover(lane)
        self.close_finished_runs()
        data_ref = ray.put(self.data)  # once per sweep; Ray ships it once per node
        # max_calls=0: a worker process runs trial after trial (its imports, CUDA context and the
        # data's device copy paid once); Ray's default for a GPU task is a fresh process per call
        remote = ray.remote(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_retries=cfg.max_retries,
                            max_calls=0)(execute)
        # a pack's resources serve the whole pack. Ray never re-runs a pack: when its worker dies,
        # its unfinished members go on as solo tasks (``collect``), each with the retries left
        remote_pack = ray.remote(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_retries=0,
                                 max_calls=0)(execute_pack)
        remote_after_pack = ray.remote(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                                       max_retries=max(0, cfg.max_retries - 1), max_calls=0)(execute)
        tallies = {opt: Tally.of(cfg.trials, study.outcomes()) for opt, study in self.studies.items()}
        for opt, tally in tallies.items():
            if tally.done >= tally.budget:
                self.queue_reevals(opt)
        # ref -> its lane, its trials (number, run id), and its PackTask when it is a pack
        in_flight: dict[Any, tuple[Lane, list[tuple[int, str]], PackTask | None]] = {}
        untidy: dict[str, Lane] = {}  # searches with newly finished trials, tidied once the slots are refilled
        try:
            with Progress(tallies) as progress:
                while True:
                    while len(in_flight) < cfg.workers:
                        lane = self.next_lane(tallies)
                        if lane is None:
                            break
                        size = 1 if lane.is_reeval else self.pack_size(tallies[lane.optimizer])
                        if size == 1:
                            ref, number, run_id = self.submit(lane, remote, data_ref)
                            in_flight[ref] = (lane, [(number, run_id)], None)
                        else:
                            ref, pack = self.submit_pack(lane, size, remote_pack, data_ref)
                            in_flight[ref] = (lane, [(t.number, t.run_id) for t in pack.members], pack)
                        if lane.is_reeval:
                            self.reeval_waiting[lane.optimizer] -= 1
                            self.reeval_running[lane.optimizer] += 1
                        else:
                            for _ in in_flight[ref][1]:
                                progress.started(lane.optimizer)
                    for lane in untidy.values():  # after the refill: no worker waits for the deletes
                        self.tidy_checkpoints(lane)
                    untidy.clear()
                    if not in_flight:
                        break
                    ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=self.watch.poll_s)
                    if not ready:
                        self.watch.check()
                    for ref in ready:
                        lane, trials, pack = in_flight.pop(ref)
                        opt = lane.optimizer
                        outcomes, go_on_solo = self.collect(ref, lane, trials, pack)
                        for member in go_on_solo:  # still running: counted as such
                            in_flight[remote_after_pack.remote(member, data_ref)] = (
                                lane, [(member.number, member.run_id)], None)
                        for number, outcome in outcomes:
                            if lane.is_reeval:
                                self.reeval_running[opt] -= 1
                                with _storage_calls():
                                    progress.note(opt, reeval_line(lane.study, number, outcome))
                            else:
                                progress.finished(opt, outcome)
                        if not lane.is_reeval:
                            tally = tallies[opt]
                            if tally.done >= tally.budget and tally.running == 0:
                                self.queue_reevals(opt)
                            untidy[opt] = lane
        except BaseException:
            for ref in in_flight:  # their trials stay RUNNING: the next start queues them again
                ray.cancel(ref, force=True)
            raise
        self.close_finished_runs()
        for opt in cfg.optimizers:
            self.log_best_model(opt)
        for lane in self.lanes():  # trials finished under an earlier driver, and the re-evaluations
            self.tidy_checkpoints(lane)

    def report(self) -> report.Built:
        """The finished sweep's report. A tracking store that fails meanwhile stops it like any
        driver call; `sweep resume` then builds it (nothing is left to train)."""
        with self.watch.call():
            return report.build(self.cfg, self.stores, self.sweep_dir, FINISHED, self.tracker,
                                figures=self.cfg.report_figures)

    def tidy_checkpoints(self, lane: Lane) -> None:
        """Delete the checkpoints of finished trials but the one worth keeping (all kept with
        ``keep_checkpoints``): the search's best trial, and the re-evaluation whose model is the
        optimizer's best. The search is tidied after each trial is collected, so the disk holds
        one checkpoint per running trial and per optimizer, not one per trial until the sweep
        ends; re-evaluations only once all have finished (until then the best may change). The
        pass at the end catches what a dead driver left. Optuna says which trials are finished
        and best."""
        with _storage_calls():
            trials = lane.study.trials()
            if lane.is_reeval:
                keep = reeval.reported(self.studies[lane.optimizer], lane.study, self.cfg.reeval_top).model_trial
        finished = [(t, o) for t in trials if (o := outcome_of(t)) is not None and MLFLOW_RUN in t.user_attrs]
        if not lane.is_reeval:
            keep = Tally.of(0, (o for _, o in finished)).best_number
        with self.watch.call():  # deletes are best effort, but a slow server is said, not silent
            self.retention.tidy({t.number: t.user_attrs[MLFLOW_RUN] for t, _ in finished}, keep)

    def pack_size(self, tally: Tally) -> int:
        """How many of the optimizer's trials the next task trains together: ``pack`` (or
        ``AUTO_PACK``), no more than its budget has left."""
        wanted = AUTO_PACK if self.cfg.pack == AUTO else self.cfg.pack
        return max(1, min(wanted, tally.budget - tally.done - tally.running))

    def submit(self, lane: Lane, remote, data_ref):
        task = self.prepare_trial(lane)
        return remote.remote(task, data_ref), task.number, task.run_id

    def submit_pack(self, lane: Lane, size: int, remote_pack, data_ref):
        """Ask ``size`` trials in a row (TPE's constant liar keeps them apart) and send them as one pack."""
        share = self.cfg.num_gpus if 0 < self.cfg.num_gpus < 1 else 1.0
        pack = PackTask(tuple(self.prepare_trial(lane) for _ in range(size)), device_share=share)
        return remote_pack.remote(pack, data_ref), pack

    def prepare_trial(self, lane: Lane) -> TrialTask:
        """Ask the lane's study for a trial and open its run: the task a worker runs."""
        opt, study, cfg = lane.optimizer, lane.study, self.cfg
        with announce_if_slow(self.storage_name), _storage_calls():
            trial = study.ask()
            tc = sample_trial(trial, opt, cfg)  # a re-evaluation's parameters were enqueued: nothing is drawn
        extra: dict[str, str] = {}
        if lane.is_reeval:
            source, seed = reeval.key_of(trial)
            # a different seed (init, batch order) on the sweep's split; its last epoch always
            # checkpointed: the model logged is rebuilt from it
            tc = dataclasses.replace(tc, seed=seed, checkpoint_every=cfg.checkpoint_every or cfg.epochs)
            extra = {tracking.SOURCE_TRIAL: str(source), tracking.REEVAL_SEED: str(seed)}
        with self._tracking_calls():
            run_id = self.tracker.trial_run(
                self.parents[opt], opt, trial.number, run_params(tc, trial.params), role=lane.role,
                retry_of=trial.user_attrs.get(RETRY_OF), extra_tags=extra,
                run_name=f"{opt}-reeval-{extra[tracking.SOURCE_TRIAL]}-seed{seed}" if lane.is_reeval else None)
        with _storage_calls():
            trial.set_user_attr(MLFLOW_RUN, run_id)
            trial.set_user_attr(HYPERPARAMETERS, chosen_hyperparameters(tc, cfg))
        return TrialTask(self.stores, study.name, trial.number, run_id, "none" if lane.is_reeval else cfg.pruner,
                         tc, threads=max(1, int(cfg.num_cpus)), credentials=self.credentials)

    def collect(self, ref, lane: Lane, trials: list[tuple[int, str]],
                pack: PackTask | None = None) -> tuple[list[tuple[int, TrialOutcome]], list[TrialTask]]:
        """The task's outcomes as (trial number, outcome), and the members of a pack whose worker
        died that go on solo (the driver sends them). A store that failed in the worker stops the
        sweep; a worker that died past Ray's retries, or raised, makes its trials FAILED."""
        import ray

        try:
            got = ray.get(ref)
            return list(zip((number for number, _ in trials), got if isinstance(got, list) else [got])), []
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, StoreUnavailable):
                raise StoreUnavailable(cause.store, cause.detail) from None
            if isinstance(exc, StoreUnavailable):
                raise StoreUnavailable(exc.store, exc.detail) from None
            if pack is not None and self.cfg.max_retries and not isinstance(exc, ray.exceptions.RayTaskError):
                return self.after_pack_died(lane, pack)
            if cause is not None and not isinstance(exc, ray.exceptions.WorkerCrashedError):
                reason = f"worker error: {first_line(cause)}"
            else:  # Ray's own message ends with what happened to the worker
                reason = f"worker error: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            with self._tracking_calls():
                return [(number, finish_trial(lane.study, self.stores.tracking_uri, run_id, number, Status.FAILED,
                                              reason)) for number, run_id in trials], []

    def after_pack_died(self, lane: Lane, pack: PackTask) -> tuple[list[tuple[int, TrialOutcome]], list[TrialTask]]:
        """A pack's worker died (killed, out of memory, its node lost): the members it had
        finished keep their outcomes; the others go on solo, each from its own checkpoint, as a
        solo trial's retry does (its attempt counted)."""
        finished, go_on = [], []
        for member in pack.members:
            with _storage_calls():
                outcome = outcome_of(lane.study.record(member.number))
            if outcome is None:
                go_on.append(member)
            else:
                finished.append((member.number, outcome))
        _say(lane.optimizer, f"the worker of pack {pack.label} died: trial{'s' if len(go_on) > 1 else ''} "
                             f"{', '.join(str(m.number) for m in go_on)} go{'' if len(go_on) > 1 else 'es'} on solo")
        return finished, go_on


def reeval_line(study: SweepStudy, number: int, outcome: TrialOutcome) -> str:
    """One line per finished re-evaluation."""
    source, seed = reeval.key_of(study.record(number)) or (None, None)
    test = outcome.metrics.get("test_accuracy")
    shown = f" test_acc={test:.4f}" if test is not None else f" ({outcome.reason})" if outcome.reason else ""
    return f"re-evaluation of trial {source} seed {seed}: {outcome.status.value}{shown}"


def _storage_calls() -> store_calls:
    return store_calls(OPTUNA)
