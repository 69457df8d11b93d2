"""Checks that need I/O, run before a sweep writes anything: can it write its directory, reach
its stores and its Ray cluster, and are the stores free of another sweep of the same name?

Each failure is a ``ConfigError`` naming the key, so a bad location ends like any bad value: one
line, exit code 2, nothing written. Probes use short timeouts instead of the clients' own
retries, which wait minutes before they give up.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path

from sweep.core.config import SweepConfig
from sweep.core.credentials import is_server, public, redact, redacted
from sweep.core.errors import ConfigError, first_line
from sweep.stores.damage import file_of
from sweep.stores.sweepdir import Stores

TIMEOUT_S = 5


def check_writable(key: str, path: Path) -> None:
    """``path`` need not exist, but the nearest existing folder above it must take a new folder.
    Tried for real (made and removed at once): permission bits say yes under /proc as root."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(key, f"{existing} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sweep-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(key, f"cannot create folders under {existing} ({exc.strerror})") from None


def check_database(key: str, url: str, given: bool) -> None:
    """A server database must accept a connection now. A file database given by the user must be
    in a folder that exists (a typo would otherwise create a stray tree); the default one lives in
    the sweep directory, which the sweep creates."""
    path = file_of(url)
    if path is not None:
        if path.exists() and not (path.is_file() and os.access(path, os.R_OK | os.W_OK)):
            raise ConfigError(key, f"{path} is not a file this process can read and write")
        if given and not path.parent.is_dir():
            raise ConfigError(key, f"folder {path.parent} does not exist; create it or pick another path")
        check_writable(key, path.parent)
        return
    from sqlalchemy import create_engine

    try:
        engine = create_engine(url, connect_args={"connect_timeout": TIMEOUT_S})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # missing driver, unknown host, refused, bad password, no such database
        raise ConfigError(key, redact(f"cannot connect to {redacted(url)} ({first_line(exc, 200)})", url)) from None


def check_tracking_server(key: str, url: str) -> None:
    """``/health`` answers without credentials (MLflow's basic auth leaves it open)."""
    health = f"{public(url).rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=TIMEOUT_S) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except Exception as exc:
        problem = first_line(exc, 200)
    raise ConfigError(key, redact(f"no MLflow tracking server answers at {health} ({problem})", url))


def check_ray_address(key: str, address: str | None) -> None:
    """HOST:PORT must accept a TCP connection; ray.init would otherwise retry for minutes."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(key, f"no Ray cluster answers at {address} ({first_line(exc, 200)})") from None


def check_stores(cfg: SweepConfig, stores: Stores) -> None:
    check_writable("output_dir", Path(cfg.output_dir))
    check_database("storage", stores.storage, given=cfg.storage is not None)
    if is_server(stores.tracking_uri):
        check_tracking_server("tracking_uri", stores.tracking_uri)
    else:
        check_database("tracking_uri", stores.tracking_uri, given=cfg.tracking_uri is not None)
    check_ray_address("ray_address", cfg.ray_address)


def check_same_sweep(name: str, stores: Stores, sweep_id: str) -> None:
    """Refuse stores that already hold a sweep of this name started elsewhere (another sweep id):
    mixing the two would corrupt both. Reads only; a store that does not exist yet holds nothing."""
    from sweep.stores.studies import foreign_studies
    from sweep.stores.tracking import foreign_experiment

    where = None
    path = file_of(stores.storage)
    if (path is None or path.exists()) and foreign_studies(stores.storage, name, sweep_id):
        where = stores.storage
    path = file_of(stores.tracking_uri)
    if where is None and (path is None or path.exists()) and foreign_experiment(stores.tracking_uri, name, sweep_id):
        where = stores.tracking_uri
    if where is not None:
        raise ConfigError(
            "name",
            f"{redacted(where)} already holds a sweep named {name!r} started "
            "from another output directory; pick a new name= or resume it from its own",
        )


def warn_local_stores_on_cluster(cfg: SweepConfig, stores: Stores) -> None:
    """Files on this machine are out of reach of workers on other machines (one-host clusters are fine)."""
    if cfg.ray_address in (None, "local"):
        return
    local = [url for url in (stores.storage, stores.tracking_uri) if file_of(url) is not None]
    if local:
        print(
            f"warning: Ray cluster {cfg.ray_address} with stores on this machine ({', '.join(local)}): "
            "workers on other machines cannot reach them; use storage=postgresql://... and "
            "tracking_uri=http://... there",
            file=sys.stderr,
        )


def check_resources(cfg: SweepConfig) -> None:
    """Some live Ray node must fit one trial, else its tasks would wait for ever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    for key, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        need = getattr(cfg, key)
        largest = max((node.get(resource, 0.0) for node in nodes), default=0.0)
        if need > largest:
            raise ConfigError(
                key,
                f"each trial asks for {need:g} {resource}, but the largest Ray node has "
                f"{largest:g}; lower {key}= or add nodes",
            )


def _journal_path(stores: Stores) -> Path | None:
    return Path(stores.storage[len("journal:///") :]) if stores.storage.startswith("journal:///") else None


def check_journal(stores: Stores) -> None:
    """Say before anything is written that the journal's last record is torn (it is repaired
    once this driver holds the sweep)."""
    from sweep.stores.journal import find_torn_tail

    path = _journal_path(stores)
    torn = find_torn_tail(path) if path is not None else None
    if torn is not None:
        print(
            f"warning: {path} ends in a damaged record; it will be set aside before the sweep goes on", file=sys.stderr
        )


def repair_journal(stores: Stores) -> None:
    """Set a torn journal tail aside (a copy of the whole file is kept) before Optuna appends to
    it; the lost record's trial comes back RUNNING and is re-run by the usual recovery."""
    from sweep.stores.journal import find_torn_tail, set_aside
    from sweep.stores.studies import open_storage

    path = _journal_path(stores)
    torn = find_torn_tail(path) if path is not None else None
    if torn is None:
        return
    copy = set_aside(torn)
    open_storage.cache_clear()  # a storage opened before the repair has read the torn file
    print(f"repaired: {torn.describe()}; the whole file was copied to {copy.name}", file=sys.stderr, flush=True)
