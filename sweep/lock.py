"""One driver per sweep: an exclusive ``flock`` on ``<sweep dir>/lock``, held while it runs.

The kernel drops the lock when the driver dies, however it dies (SIGKILL, a container stopped),
so a dead driver never blocks the next one, unlike a PID written to a file (which in a
container is often 1, and alive again).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "lock"


def is_locked(sweep_dir: Path) -> bool:
    """Whether a live driver holds the sweep; creates nothing."""
    path = sweep_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):  # no lock file: no driver
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


class SweepLock:
    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another driver holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
