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
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sweep.config import ConfigError

TIMEOUT_S = 5


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def check_writable(key: str, path: Path) -> None:
    """``path`` need not exist, but the nearest existing folder above it must be a writable folder."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(key, f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot write under {existing}")


def file_of(url: str) -> Path | None:
    """The local file behind a journal:/// or sqlite:/// URL, else None."""
    for scheme in ("journal:///", "sqlite:///"):
        if url.startswith(scheme):
            return Path(url[len(scheme):])
    return None


def check_database(key: str, url: str) -> None:
    """A server database must accept a connection now (a file database: its folder be writable)."""
    path = file_of(url)
    if path is not None:
        if path.exists() and not (path.is_file() and os.access(path, os.R_OK | os.W_OK)):
            raise ConfigError(key, f"{path} is not a file this process can read and write")
        check_writable(key, path.parent)
        return
    from sqlalchemy import create_engine

    try:
        engine = create_engine(url, connect_args={"connect_timeout": TIMEOUT_S})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # missing driver, unknown host, refused, bad password, no such database
        raise ConfigError(key, f"cannot connect to {_redacted(url)} ({_first_line(exc)})") from None


def check_tracking_server(key: str, url: str) -> None:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=TIMEOUT_S) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except Exception as exc:
        problem = _first_line(exc)
    raise ConfigError(key, f"no MLflow tracking server answers at {url}/health ({problem})")


def check_ray_address(key: str, address: str | None) -> None:
    """HOST:PORT must accept a TCP connection; ray.init would otherwise retry for minutes."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(key, f"no Ray cluster answers at {address} ({_first_line(exc)})") from None


def check_stores(cfg: dict[str, Any]) -> None:
    check_writable("output_dir", Path(cfg["output_dir"]))
    check_database("storage", cfg["storage"])
    if cfg["tracking_uri"].startswith(("http://", "https://")):
        check_tracking_server("tracking_uri", cfg["tracking_uri"])
    else:
        check_database("tracking_uri", cfg["tracking_uri"])
    check_ray_address("ray_address", cfg["ray_address"])


def check_same_sweep(cfg: dict[str, Any], sweep_id: str) -> None:
    """Refuse stores that already hold a sweep of this name started elsewhere (another sweep id):
    mixing the two would corrupt both. Reads only; a store that does not exist yet holds nothing."""
    from sweep.studies import foreign_studies
    from sweep.tracking import foreign_experiment

    where = None
    path = file_of(cfg["storage"])
    if (path is None or path.exists()) and foreign_studies(cfg, sweep_id):
        where = cfg["storage"]
    path = file_of(cfg["tracking_uri"])
    if where is None and (path is None or path.exists()) and foreign_experiment(cfg, sweep_id):
        where = cfg["tracking_uri"]
    if where is not None:
        raise ConfigError("name", f"{_redacted(where)} already holds a sweep named {cfg['name']!r} started "
                                  "from another output directory; pick a new name= or resume it from its own")


def warn_local_stores_on_cluster(cfg: dict[str, Any]) -> None:
    """Files on this machine are out of reach of workers on other machines (one-host clusters are fine)."""
    if cfg["ray_address"] in (None, "local"):
        return
    local = [cfg[key] for key in ("storage", "tracking_uri") if file_of(cfg[key]) is not None]
    if local:
        print(f"warning: Ray cluster {cfg['ray_address']} with stores on this machine ({', '.join(local)}): "
              "workers on other machines cannot reach them; use storage=postgresql://... and "
              "tracking_uri=http://... there", file=sys.stderr)


def check_resources(cfg: dict[str, Any]) -> None:
    """Some live Ray node must fit one trial, else its tasks would wait for ever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    for key, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        need = cfg[key]
        largest = max((node.get(resource, 0.0) for node in nodes), default=0.0)
        if need > largest:
            raise ConfigError(key, f"each trial asks for {need:g} {resource}, but the largest Ray node has "
                                   f"{largest:g}; lower {key}= or add nodes")


def _redacted(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
