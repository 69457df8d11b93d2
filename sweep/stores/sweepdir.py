"""The sweep directory ``<output_dir>/<name>/``: the one module that knows every file in it.

- ``sweep.yaml`` the config (``sweep resume`` reloads it); ``id`` the sweep's identity in shared
  stores; ``state`` running / finished / interrupted; ``lock`` held by the running driver;
- ``optuna.journal`` and ``mlflow.db`` (+ ``artifacts/``): the stores left at their defaults, so a
  moved or copied sweep takes them along;
- ``benchmark.yaml`` instead of ``sweep.yaml`` in a benchmark's folder, whose child sweeps live in
  ``sweeps/``;
- ``summary.json`` the results; ``report/`` the report (``report.html``, its PNGs,
  ``comparison.csv``, ``comparison.md``); ``driver.log``: the traceback of an unexpected driver error.

One driver per sweep: ``claim`` takes an exclusive ``flock`` on ``lock`` and, under it, reads or
creates the id, in one step. The kernel drops the lock however the driver dies (SIGKILL, a
container stopped), unlike a PID in a file (often 1 in a container, and alive again).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweep.core.config import SweepConfig, from_saved, read_yaml
from sweep.core.credentials import is_server, redact, redacted
from sweep.core.errors import ConfigError, SweepDamaged, first_line

CONFIG, ID, STATE, LOCK = "sweep.yaml", "id", "state", "lock"
JOURNAL, MLFLOW_DB, ARTIFACTS = "optuna.journal", "mlflow.db", "artifacts"
SUMMARY, REPORT, DRIVER_LOG = "summary.json", "report", "driver.log"
BENCHMARK = "benchmark.yaml"  # a benchmark's folder (``sweep.core.benchmark``): its config as run
RUNNING, FINISHED, INTERRUPTED = "running", "finished", "interrupted"


@dataclass(frozen=True)
class Stores:
    """Where a sweep's trials are recorded; both always set once the sweep has a directory."""

    storage: str  # Optuna storage URL (with its password, if given: in memory only)
    tracking_uri: str  # MLflow tracking URI (likewise)
    # Without a tracking server: the sweep directory's artifacts/ as it is now. Runs' artifacts are
    # read and written under it (``tracking.artifact_uri``), not where MLflow recorded them when
    # the experiment was created, so a moved sweep writes nothing to its old place.
    artifacts: str | None = None

    def __repr__(self) -> str:  # shipped to workers and shown in tracebacks: no password
        return f"Stores(storage={redacted(self.storage)!r}, tracking_uri={redacted(self.tracking_uri)!r})"

    @property
    def local_tracking(self) -> bool:
        """No tracking server: the run artifacts (checkpoints) go to the sweep directory, not to
        MLflow's fallback ``./mlruns`` under whatever folder the process runs in."""
        return not is_server(self.tracking_uri)


class SweepDir:
    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser().resolve()
        self._lock_fd: int | None = None

    @classmethod
    def of(cls, output_dir: str, name: str) -> SweepDir:
        return cls(Path(output_dir) / name)

    @property
    def name(self) -> str:
        return self.path.name

    def __truediv__(self, file: str) -> Path:
        return self.path / file

    def exists(self) -> bool:
        return (self.path / CONFIG).exists()

    # ---- config and identity ----
    def saved_config(self) -> dict[str, Any] | None:
        """The config as run; None when there is none; ``SweepDamaged`` when it cannot be read."""
        return self._read_saved(CONFIG)

    def saved_benchmark(self) -> dict[str, Any] | None:
        """A benchmark folder's config as run; None when this is no benchmark."""
        return self._read_saved(BENCHMARK)

    def repair_command(self) -> str:
        return f"sweep check {self.name} --output-dir {self.path.parent} --repair"

    def _read_saved(self, file: str) -> dict[str, Any] | None:
        path = self.path / file
        if not path.exists():
            return None
        try:
            if path.stat().st_size == 0:
                raise ConfigError("config", "is empty")
            return read_yaml(path)
        except ConfigError as exc:  # read_yaml's line names the file: keep what follows its name
            # ... and not its advice for a file the user writes ("save the file as UTF-8")
            problem = exc.message.replace(f"{path} ", "").replace(str(path), "the file").split("; ")[0]
        except ValueError as exc:  # undecodable bytes
            problem = first_line(exc)
        raise SweepDamaged(
            str(path),
            f"unreadable ({problem})",
            f"restore it from a copy, or rebuild it from the copy MLflow keeps: {self.repair_command()}",
        )

    def write_config(self, values: dict[str, Any]) -> None:
        """The config as run, with ``output_dir`` where the sweep is now."""
        (self.path / CONFIG).write_text(self.config_text(values))

    def config_text(self, values: dict[str, Any]) -> str:
        """``sweep.yaml``'s text for ``values`` (the tracking store keeps the same text)."""
        return yaml.safe_dump({**values, "output_dir": str(self.path.parent)}, sort_keys=True)

    def read_id(self) -> str | None:
        path = self.path / ID
        return path.read_text().strip() or None if path.exists() else None

    def stores(self, storage: str | None, tracking_uri: str | None) -> Stores:
        """Stores left unset live in this directory."""
        tracking = tracking_uri or f"sqlite:///{self.path / MLFLOW_DB}"
        return Stores(
            storage or f"journal:///{self.path / JOURNAL}",
            tracking,
            None if is_server(tracking) else str(self.artifacts),
        )

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL

    @property
    def artifacts(self) -> Path:
        return self.path / ARTIFACTS

    # ---- one driver at a time ----
    def is_locked(self) -> bool:
        """Whether a live driver holds the sweep; creates nothing."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        """Hold the sweep's lock, without reading or creating its id (``sweep check --repair``: no
        driver may start meanwhile; ``claim`` builds on it). Yields False if a driver holds it."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def claim(self) -> Iterator[str | None]:
        """Hold the sweep for this driver: create the directory, take the lock, then read the id
        (or create it, exclusively) while holding it. Yields the id, or None if another driver
        holds the lock. Checking and claiming are one step, so a driver that was slow to get
        here can never write its id over a sweep that another driver has run meanwhile."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.hold() as held:
            if not held:
                yield None
                return
            sweep_id = self.read_id()
            if sweep_id is None:
                sweep_id = uuid.uuid4().hex
                with open(self.path / ID, "x") as out:  # "x": never over an id written meanwhile
                    out.write(sweep_id + "\n")
            yield sweep_id

    # ---- state ----
    def write_state(self, state: str) -> None:
        text = f"{RUNNING} {socket.gethostname()}:{os.getpid()}" if state == RUNNING else state
        (self.path / STATE).write_text(text + "\n")

    def read_state(self) -> str:
        path = self.path / STATE
        return path.read_text().strip() if path.exists() else "unknown"

    def state(self) -> str:
        """running / finished / interrupted; "running" with no driver holding the lock means it died."""
        words = self.read_state().split()
        state = words[0] if words else "unknown"
        if state == RUNNING and not self.is_locked():
            return INTERRUPTED
        return state

    # ---- results ----
    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))

    @property
    def report(self) -> Path:
        """The report's folder: report.html, its PNGs, comparison.csv and comparison.md."""
        return self.path / REPORT

    def summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.exists() else None

    def write_driver_log(self, exc: BaseException, *urls: str | None) -> Path:
        """The full traceback of an unexpected driver error, appended (one sweep may have several),
        with the secrets of ``urls`` and of the environment masked (exception texts quote URLs)."""
        path = self.path / DRIVER_LOG
        with path.open("a") as out:
            out.write(redact("".join(traceback.format_exception(exc)), *urls) + "\n")
        return path


def list_sweeps(output_dir: str | Path) -> list[SweepDir]:
    """The sweeps under ``output_dir``: folders with a config, or with an id and no config (a sweep
    that lost its ``sweep.yaml`` is listed, as damaged); benchmarks' folders are not sweeps."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = {p.parent for pattern in (f"*/{CONFIG}", f"*/{ID}") for p in root.glob(pattern)}
    return sorted((SweepDir(p) for p in found if not (p / BENCHMARK).exists()), key=lambda d: d.name)


def latest_sweep(output_dir: str | Path) -> SweepDir | None:
    root = Path(output_dir)
    found = sorted(root.glob(f"*/{CONFIG}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    return SweepDir(found[-1].parent) if found else None


def saved_sweep(output_dir: str | Path, name: str, overrides: list[str]) -> tuple[SweepDir, SweepConfig]:
    """The sweep ``name`` under ``output_dir`` and its saved config with ``overrides`` (``sweep
    resume``, ``sweep report``, ``sweep.api.resume``); ``ConfigError`` when there is none or an
    override is bad."""
    sweep_dir = SweepDir.of(output_dir, name)
    saved = sweep_dir.saved_config()
    if saved is None:
        raise ConfigError("name", f"no sweep {name!r} under {sweep_dir.path.parent} (see `sweep ls --output-dir DIR`)")
    return sweep_dir, from_saved(saved, [*overrides, f"output_dir={sweep_dir.path.parent}"])
