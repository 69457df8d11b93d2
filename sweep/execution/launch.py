"""Launching a sweep: check everything writing nothing (``prepare``), start or join Ray, claim the
sweep directory, then hand it to the ``Driver`` and mark how it ended.

Raises, and the CLI decides exit codes: ``ConfigError`` (bad input, nothing written),
``StoreUnavailable`` (a store went away mid-sweep or the disk is full; finished trials are kept),
``Stopped`` (Ctrl-C or SIGTERM), or anything unexpected.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import threading
from dataclasses import dataclass
from typing import Any

from sweep.core import credentials
from sweep.core.config import FROZEN_KEYS, STORE_URL_KEYS, SweepConfig, saved_values
from sweep.core.datasets import DataSplits, load_data
from sweep.core.errors import ConfigError, DatasetUnavailable, Stopped, StoreUnavailable, first_line
from sweep.execution import preflight
from sweep.execution.driver import Driver
from sweep.report import build as report
from sweep.stores import damage
from sweep.stores.sweepdir import FINISHED, INTERRUPTED, RUNNING, Stores, SweepDir


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
    defaults = SweepConfig().to_dict()  # a sweep saved before a key existed ran with its default
    for key in FROZEN_KEYS:
        was = saved.get(key, defaults[key])
        if key in STORE_URL_KEYS and values[key] is None:
            cfg = cfg.replace(**{key: saved.get(key)})
        elif values[key] != was:
            raise ConfigError(
                key,
                f"sweep {cfg.name!r} exists with {key}={was!r}, not {values[key]!r}; "
                f"resume with that value or pick a new name=",
            )
    for name, declaration in (saved.get("custom_optimizers") or {}).items():
        given = values["custom_optimizers"].get(name)
        if given is not None and given != declaration:
            raise ConfigError(
                "custom_optimizers",
                f"sweep {cfg.name!r} declares {name} otherwise (its studies were run with that "
                "declaration); resume with it, or give yours another name",
            )
    dropped = [opt for opt in saved["optimizers"] if opt not in cfg.optimizers]
    if dropped:
        raise ConfigError(
            "optimizers",
            f"sweep {cfg.name!r} already has studies for {', '.join(dropped)}; "
            "keep them in optimizers= (you may add more)",
        )
    return cfg


def prepare(cfg: SweepConfig) -> Prepared:
    """Check everything that can be wrong, writing nothing. Raises ConfigError."""
    sweep_dir = SweepDir.of(cfg.output_dir, cfg.name)
    if sweep_dir.is_locked():
        raise ConfigError(
            "name",
            f"sweep {cfg.name!r} is being run by another driver ({sweep_dir.read_state()}); wait for it or stop it",
        )
    cfg = check_resumable(cfg, sweep_dir.saved_config())
    seen_id = sweep_dir.read_id()
    stores = sweep_dir.stores(cfg.storage, cfg.tracking_uri)
    damage.require_intact(sweep_dir, stores)  # an existing sweep's files, before any store reads them
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
        from sweep.execution import shipping

        shipping.pickle_by_value(cfg)
        return
    prefetch = threading.Thread(
        target=_import_quietly, args=(driver_imports(stores),), name="sweep-prefetch", daemon=True
    )
    prefetch.start()
    try:
        _ray_init(cfg)
    finally:
        prefetch.join()  # no import left racing the driver's own


def _ray_init(cfg: SweepConfig) -> None:
    import os

    import ray

    from sweep.execution import ray_logs, shipping

    ray_logs.quiet()  # Ray's start-up INFO lines and token notice off the terminal; its errors stay
    address = cfg.ray_address
    if address and address != "local":
        # gRPC keepalive: without it a trial pushed to a node whose link was cut is retried only
        # after TCP gives up (many minutes); with it, within seconds of Ray declaring the node dead
        # (tests/test_cluster.py). An environment that sets these wins.
        for name, value in KEEPALIVE.items():
            os.environ.setdefault(name, value)
        # paths, not module objects: inside a Ray job (`sweep submit`) Ray deep-copies this
        # runtime_env to merge it with the job's, and a module object cannot be copied
        code = shipping.project_code() + shipping.user_code(cfg)
        ray.init(address=address, log_to_driver=False, runtime_env={"py_modules": code})
    else:
        user = shipping.user_code(cfg)
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"py_modules": user} if user else None,
        )


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

    import sweep.execution.worker  # noqa: F401 - its reporting: Optuna, MLflow
    import sweep.train.packed  # noqa: F401 - the trial loop (solo and packed): torch, the models, the optimizers

    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return os.getpid()
