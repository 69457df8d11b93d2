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
import errno
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any

from sweep import checkpoints, credentials, preflight, report, tracking
from sweep.config import FROZEN_KEYS, STORE_URL_KEYS, SweepConfig, saved_values
from sweep.datasets import DataSplits, DatasetUnavailable, load_data
from sweep.errors import ConfigError, StoreUnavailable, first_line, store_calls
from sweep.finish import MLFLOW, OPTUNA, close_from_record, finish_trial
from sweep.outcome import Status, Tally, TrialOutcome
from sweep.progress import Progress
from sweep.search import chosen_hyperparameters, run_params, sample_trial
from sweep.studies import HYPERPARAMETERS, MLFLOW_RUN, RETRY_OF, SweepStudy, outcome_of
from sweep.sweepdir import FINISHED, INTERRUPTED, RUNNING, Stores, SweepDir
from sweep.waiting import TrackingWatch, announce_if_slow
from sweep.worker import TrialTask, execute

INTERRUPTED_REASON = "interrupted: the driver stopped before the trial finished; queued again"
# MLflow's SQL store logs every database error with its whole traceback before raising it; the
# sweep turns that error into one line (StoreUnavailable), so the log would only add a library
# traceback to the terminal.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (batch schedulers, `docker stop`, Kubernetes): stop like Ctrl-C."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
    rows: list[report.OptimizerRow]


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
    init_ray(cfg)
    preflight.check_resources(cfg)
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
                rows = Driver(cfg, p.stores, p.sweep_dir, p.data, sweep_id).run()
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk must not hide why the sweep stopped
                p.sweep_dir.write_state(INTERRUPTED)
            raise
        p.sweep_dir.write_state(FINISHED)
    return SweepResult(p.sweep_dir, rows)


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


def init_ray(cfg: SweepConfig) -> None:
    import os

    import ray

    if ray.is_initialized():
        return
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


def _say(opt: str, text: str) -> None:
    print(f"[{opt:>9}] {text}", flush=True)


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
                                              "trials", "seed")}
        if cfg.batch_sizes:  # searched: each trial's run has its own
            fixed["batch_size"] = list(cfg.batch_sizes)
        if cfg.train_subset is not None:
            fixed["train_subset"] = cfg.train_subset
        self.retention = checkpoints.Retention(stores.tracking_uri, keep_all=cfg.keep_checkpoints)
        self.studies: dict[str, SweepStudy] = {}
        self.parents: dict[str, str] = {}
        for opt in cfg.optimizers:
            with announce_if_slow(self.storage_name), _storage_calls():
                study = SweepStudy.open(stores.storage, cfg.name, opt, sweep_id, sampler=cfg.sampler,
                                        pruner=cfg.pruner, seed=cfg.seed, trials=cfg.trials, epochs=cfg.epochs)
            with self._tracking_calls():
                self.parents[opt] = self.tracker.parent_run(opt, fixed)
            with _storage_calls():
                study.set_attr(MLFLOW_RUN, self.parents[opt])
            self.studies[opt] = study

    @contextlib.contextmanager
    def _tracking_calls(self):
        """The driver's own MLflow calls: said when slow, and an error (a server gone, a full disk)
        stops the sweep as StoreUnavailable like the workers' calls do."""
        with self.watch.call(), store_calls(MLFLOW):
            yield

    # ---- repair ----
    def recover(self, opt: str) -> None:
        """Repair what a dead driver left: finish its RUNNING trials as interrupted (study first,
        then their runs, as everywhere) and queue each interrupted trial again once. Every step
        can be repeated, and ``close_finished_runs`` closes a run this misses, so dying here is
        safe too. Runs of trials the study no longer has (a torn journal) are set aside."""
        study = self.studies[opt]
        with _storage_calls():
            trials = study.trials()
        with self._tracking_calls():
            runs = self.tracker.trial_runs(opt)
        for number, run_id in runs.items():
            if number >= len(trials):
                with self._tracking_calls():
                    self.tracker.orphan(run_id, "its trial was lost from the Optuna storage (torn journal)")
                _say(opt, f"trial {number}: its record was lost from the Optuna journal; "
                          "its MLflow run is kept, tagged sweep.orphaned, and the trial runs again")
        for t in trials:
            if t.state.name != "RUNNING":
                continue
            with self._tracking_calls():
                run_id = (t.user_attrs.get(MLFLOW_RUN) or runs.get(t.number)
                          or self.tracker.trial_run(self.parents[opt], opt, t.number, t.params))
            # rewrite_run: a run already closed means the trial's tell was lost (torn journal)
            finish_trial(study, self.stores.tracking_uri, run_id, t.number, Status.INTERRUPTED, INTERRUPTED_REASON,
                         rewrite_run=True)
            _say(opt, f"trial {t.number} was interrupted: recorded as interrupted")
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
        """Close trial runs left RUNNING although Optuna has the trial's outcome (a process died
        between the two writes); Optuna is the source of truth."""
        with self._tracking_calls():
            running = self.tracker.running_trial_runs()
        for (opt, number), run_id in running.items():
            study = self.studies.get(opt)
            with _storage_calls():
                known = study is not None and number < len(study.trials())
            if known:
                close_from_record(study, self.stores.tracking_uri, run_id, number)

    # ---- the loop ----
    def run(self) -> list[report.OptimizerRow]:
        import ray

        cfg = self.cfg
        for opt in cfg.optimizers:
            self.recover(opt)
        self.close_finished_runs()
        data_ref = ray.put(self.data)  # once per sweep; Ray ships it once per node
        remote = ray.remote(execute).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                                            max_retries=cfg.max_retries)
        tallies = {opt: Tally.of(cfg.trials, study.outcomes()) for opt, study in self.studies.items()}
        in_flight: dict[Any, tuple[str, int, str]] = {}
        try:
            with Progress(tallies) as progress:
                while True:
                    while len(in_flight) < cfg.workers:
                        candidates = [o for o, t in tallies.items() if t.done + t.running < t.budget]
                        if not candidates:
                            break
                        opt = min(candidates, key=lambda o: tallies[o].done + tallies[o].running)
                        ref, number, run_id = self.submit(opt, remote, data_ref)
                        in_flight[ref] = (opt, number, run_id)
                        progress.started(opt)
                    if not in_flight:
                        break
                    ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=self.watch.poll_s)
                    if not ready:
                        self.watch.check()
                    for ref in ready:
                        opt, number, run_id = in_flight.pop(ref)
                        progress.finished(opt, self.collect(ref, opt, number, run_id))
                        self.tidy_checkpoints(opt)
        except BaseException:
            for ref in in_flight:  # their trials stay RUNNING: the next start queues them again
                ray.cancel(ref, force=True)
            raise
        self.close_finished_runs()
        for opt in cfg.optimizers:  # trials finished under an earlier driver, when none ran now
            self.tidy_checkpoints(opt)
        from mlflow.exceptions import MlflowException

        with self.watch.call():
            try:
                return report.write(cfg, self.stores, self.sweep_dir, self.studies, self.tracker, self.parents)
            except MlflowException as exc:  # the parent runs' summaries: the store, not a bug (files: see start)
                raise StoreUnavailable(MLFLOW, first_line(exc)) from exc

    def tidy_checkpoints(self, opt: str) -> None:
        """Delete the checkpoints of the optimizer's finished trials but its best's (all kept with
        ``keep_checkpoints``). Here, after each trial is collected, the disk holds one checkpoint
        per running trial and per optimizer, not one per trial until the sweep ends; the pass at
        the end catches what a dead driver left. Optuna says which trials are finished and best."""
        with _storage_calls():
            trials = self.studies[opt].trials()
        finished = [(t, o) for t in trials if (o := outcome_of(t)) is not None and MLFLOW_RUN in t.user_attrs]
        best = Tally.of(0, (o for _, o in finished)).best_number
        with self.watch.call():  # deletes are best effort, but a slow server is said, not silent
            self.retention.tidy({t.number: t.user_attrs[MLFLOW_RUN] for t, _ in finished}, best)

    def submit(self, opt: str, remote, data_ref):
        study = self.studies[opt]
        with announce_if_slow(self.storage_name), \
                _storage_calls():
            trial = study.ask()
            tc = sample_trial(trial, opt, self.cfg)
        with self._tracking_calls():
            run_id = self.tracker.trial_run(self.parents[opt], opt, trial.number, run_params(tc, trial.params),
                                            retry_of=trial.user_attrs.get(RETRY_OF))
        with _storage_calls():
            trial.set_user_attr(MLFLOW_RUN, run_id)
            trial.set_user_attr(HYPERPARAMETERS, chosen_hyperparameters(tc, self.cfg))
        task = TrialTask(self.stores, study.name, trial.number, run_id, self.cfg.pruner, tc,
                         threads=max(1, int(self.cfg.num_cpus)), credentials=self.credentials)
        return remote.remote(task, data_ref), trial.number, run_id

    def collect(self, ref, opt: str, number: int, run_id: str) -> TrialOutcome:
        """The worker's outcome. A store that failed in the worker stops the sweep; a worker that
        died past Ray's retries, or raised, makes the trial FAILED."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, StoreUnavailable):
                raise StoreUnavailable(cause.store, cause.detail) from None
            if isinstance(exc, StoreUnavailable):
                raise StoreUnavailable(exc.store, exc.detail) from None
            if cause is not None and not isinstance(exc, ray.exceptions.WorkerCrashedError):
                reason = f"worker error: {first_line(cause)}"
            else:  # Ray's own message ends with what happened to the worker
                reason = f"worker error: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            with self._tracking_calls():
                return finish_trial(self.studies[opt], self.stores.tracking_uri, run_id, number, Status.FAILED, reason)


def _storage_calls() -> store_calls:
    return store_calls(OPTUNA)

