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
from typing import Iterator

from sweep.core.credentials import is_server, public, redacted

SLOW_S = 5.0


@contextlib.contextmanager
def announce_if_slow(what: str, after_s: float = SLOW_S) -> Iterator[None]:
    """Print "waiting for WHAT" if the block takes longer than ``after_s``, and when it ends."""
    started = time.monotonic()
    fired = threading.Event()

    def say():
        fired.set()
        print(f"waiting for {what}: not answering; its client keeps retrying", file=sys.stderr, flush=True)

    timer = threading.Timer(after_s, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if fired.is_set():
            print(f"{what} answered after {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


class TrackingWatch:
    """Watches an MLflow tracking server while workers may be stuck in their clients' retries.

    ``call()`` wraps the driver's own tracking calls; ``check()`` runs when no trial finished for
    ``poll_s`` seconds and probes ``/health`` (a file store has nothing to watch)."""

    poll_s = SLOW_S

    def __init__(self, tracking_uri: str):
        self.uri = tracking_uri
        self.http = is_server(tracking_uri)
        self.down_since: float | None = None

    @property
    def what(self) -> str:
        shown = redacted(self.uri)
        return f"the MLflow tracking server at {shown}" if self.http else f"the MLflow store {shown}"

    def call(self):
        return announce_if_slow(self.what)

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
            print(f"waiting for {self.what}: not answering; trials keep training and their clients keep "
                  "retrying", file=sys.stderr, flush=True)
        elif healthy and self.down_since is not None:
            print(f"{self.what} answers again after {time.monotonic() - self.down_since:.0f} s",
                  file=sys.stderr, flush=True)
            self.down_since = None
