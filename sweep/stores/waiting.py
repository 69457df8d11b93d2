"""Saying in the terminal when the sweep waits for a store, and for what.

Store clients retry quietly for minutes (MLflow's HTTP client backs off up to ~4 minutes). The
sweep keeps going afterwards with nothing lost, but a silent terminal looks hung: these print
one line when a wait starts and one when it ends.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

from sweep.core.credentials import is_server, public, redacted

SLOW_S = 5.0
# A store in a local file does not go away: it is slow when the disk or the CPU is busy (a sweep's
# own trials keep 2 cores busy), and a few seconds of that are not worth a line.
LOCAL_SLOW_S = 30.0


@contextlib.contextmanager
def announce_if_slow(what: str, after_s: float = SLOW_S, local: bool = False) -> Iterator[None]:
    """Print "waiting for WHAT" if the block takes longer than ``after_s``, and when it ends.
    ``local``: WHAT is a store in a local file, which cannot be "not answering", only slow."""
    started = time.monotonic()
    fired = threading.Event()

    def say():
        fired.set()
        if local:
            print(f"{what} is slow (busy disk or CPU); still waiting", file=sys.stderr, flush=True)
        else:
            print(f"waiting for {what}: not answering; its client keeps retrying", file=sys.stderr, flush=True)

    timer = threading.Timer(after_s, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if fired.is_set():
            took = f"{time.monotonic() - started:.0f} s"
            print(
                f"{what} caught up after {took}" if local else f"{what} answered after {took}",
                file=sys.stderr,
                flush=True,
            )


def is_local_file(url: str) -> bool:
    """A store in a file on this machine (SQLite, an Optuna journal): slow at worst, never away;
    a database or tracking server can be away."""
    return url.startswith(("sqlite:", "file:", "journal:")) or "://" not in url


def announce_slow_store(what: str, url: str, after_s: float | None = None):
    """``announce_if_slow`` for a store at ``url``: a local file is said slow (after
    ``LOCAL_SLOW_S``), a server not answering (after ``SLOW_S``)."""
    if is_local_file(url):
        return announce_if_slow(what, LOCAL_SLOW_S if after_s is None else after_s, local=True)
    return announce_if_slow(what, SLOW_S if after_s is None else after_s)


class TrackingWatch:
    """Watches an MLflow tracking server while workers may be stuck in their clients' retries.

    ``call()`` wraps the driver's own tracking calls; ``check()`` runs when no trial finished for
    ``poll_s`` seconds and probes ``/health`` (a file store has nothing to watch). A local store's
    slow call is said as slow, after ``local_slow_s``; a server's as not answering, after ``slow_s``."""

    poll_s = SLOW_S
    slow_s, local_slow_s = SLOW_S, LOCAL_SLOW_S

    def __init__(self, tracking_uri: str):
        self.uri = tracking_uri
        self.http = is_server(tracking_uri)
        self.local = is_local_file(tracking_uri)
        self.down_since: float | None = None

    @property
    def what(self) -> str:
        shown = redacted(self.uri)
        if self.http:
            return f"the MLflow tracking server at {shown}"
        if self.local and shown.startswith("sqlite:///"):  # its file
            shown = shown[len("sqlite:///") :]
        return f"the MLflow store {shown}"

    def call(self):
        return announce_slow_store(self.what, self.uri, self.local_slow_s if self.local else self.slow_s)

    def check(self) -> None:
        if not self.http:
            return
        try:
            with urllib.request.urlopen(f"{public(self.uri).rstrip('/')}/health", timeout=2) as response:
                healthy = response.status == 200
        except Exception:
            healthy = False
        if not healthy and self.down_since is None:
            self.down_since = time.monotonic()
            print(
                f"waiting for {self.what}: not answering; trials keep training and their clients keep retrying",
                file=sys.stderr,
                flush=True,
            )
        elif healthy and self.down_since is not None:
            print(
                f"{self.what} answers again after {time.monotonic() - self.down_since:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            self.down_since = None
