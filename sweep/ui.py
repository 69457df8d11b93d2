"""``sweep ui``: serve the MLflow UI on a sweep's tracking store, and stop it cleanly.

The URL is printed only once the server answers ``/health`` (it takes 5-50 s to start on a small
machine); the server runs in its own session so that SIGINT or SIGTERM to ``sweep ui`` stops the
whole process group (``mlflow server`` and its uvicorn worker) and frees the port; a port that is
already taken is refused up front instead of the server logging "Address already in use" and
exiting 0. The server's own output (its start-up notices, a deprecation warning, one access-log
line per HTTP request) is kept back unless ``verbose``: only its errors are passed on.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sweep.core.credentials import is_server
from sweep.core.errors import ConfigError, SweepError

POLL_S = 0.5  # between two /health requests, and between two checks of the stop flag
HEALTH_TIMEOUT_S = 2.0  # one /health request
START_DEADLINE_S = 180.0  # a cold start takes up to ~50 s on 2 busy cores; give up well after
STOP_GRACE_S = 10.0  # SIGTERM to the group, then SIGKILL after this long
TAIL_LINES = 50  # server output kept to explain a failed start
_NOISE = re.compile(r"\b(INFO|DEBUG)\b")  # log lines that never explain why a server died
# What a quiet server still shows: an error record, a traceback, and the lines that follow either
# until the next log record that is not an error.
_ERROR = re.compile(r"\b(ERROR|CRITICAL)\b|^Traceback \(most recent call last\)")
_RECORD = re.compile(r"^(\d{4}[/-]\d\d[/-]\d\d[ T][\d:,.]+\s+)?\[?(INFO|DEBUG|WARNING|ERROR|CRITICAL)\b")

# No proxy for /health: an http_proxy in the environment must not answer for 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(SweepError, RuntimeError):
    """The MLflow server exited, or never answered ``/health``, before it could serve the UI."""


def runs_table_url(base: str, experiment_id: str) -> str:
    """``workflowType`` stops MLflow 3 opening its GenAI overview instead of the runs."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def base_url(host: str, port: int) -> str:
    """The address a browser on this machine opens: a wildcard host is reached on loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def experiment_id(tracking_uri: str, experiment: str) -> str | None:
    """The experiment's id in the store, or None when the sweep has not created it yet."""
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    return None if found is None else found.experiment_id


def ui_url(tracking_uri: str, experiment: str, base: str) -> str:
    """The sweep's runs table under ``base``, or ``base`` itself when the experiment is missing."""
    found = experiment_id(tracking_uri, experiment)
    return base if found is None else runs_table_url(base, found)


def is_healthy(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """True when ``url`` answers 200 within ``timeout_s``; refusals and timeouts are just False."""
    try:
        with _OPENER.open(url, timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):  # URLError, HTTPError and timeouts are OSErrors
        return False


def remote_hint(tracking_uri: str, experiment: str) -> str:
    """The one line for a sweep that logs to a tracking server: that server already has the UI."""
    target = tracking_uri.rstrip("/")
    if is_healthy(f"{target}/health"):  # else MlflowClient would retry for minutes
        try:
            target = ui_url(tracking_uri, experiment, target)
        except Exception:  # noqa: BLE001 - auth, proxies, old servers: the base URL still helps
            pass
    return (
        f"experiment {experiment!r} is logged to the MLflow server at {tracking_uri}, "
        f"which serves the UI itself: open {target}"
    )


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, before spending a minute starting a server.

    SO_REUSEADDR as uvicorn sets it: connections in TIME_WAIT from an earlier UI do not count.
    """
    if not 0 < port < 65536:
        raise ConfigError("port", f"{port} is not a TCP port (1-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError("host", f"cannot resolve {host!r}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "port",
                    f"{host}:{port} is already in use (another sweep ui or MLflow server?); pick another with --port",
                ) from None
            raise ConfigError("port", f"cannot listen on {host}:{port}: {exc.strerror}") from None


def server_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """One uvicorn worker: the UI serves one person, and 4 workers take 4x longer to start."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def server_env() -> dict[str, str]:
    """Without MLflow's job runner: it starts 8 more processes (GenAI job queues) and leaves a
    directory in /dev/shm behind on every start; browsing a sweep's runs needs none of it."""
    return {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }


@dataclass
class Server:
    """A server process in its own session, its output forwarded to stderr and its tail kept."""

    process: subprocess.Popen
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    pump: threading.Thread | None = None
    quiet: bool = False  # forward only errors (``_ERROR``), not every line
    _in_error: bool = False

    @classmethod
    def launch(cls, command: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> Server:
        """Its own session: Ctrl-C in the terminal reaches only us, and we stop the whole group."""
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = cls(process, quiet=quiet)
        server.pump = threading.Thread(target=server._forward, args=(process.stdout,), daemon=True)
        server.pump.start()
        return server

    def _forward(self, stream: IO[bytes]) -> None:
        """Drain the pipe to the end (a full pipe would block the server), echoing each line (each
        error, when quiet) to stderr. Every line is kept in the tail, to explain a failed start."""
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            self.tail.append(line.rstrip())
            if not self._shown(line):
                continue
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr is gone; keep draining all the same
                pass
        stream.close()

    def _shown(self, line: str) -> bool:
        if not self.quiet:
            return True
        if _ERROR.search(line):
            self._in_error = True
        elif _RECORD.match(line.lstrip()):
            self._in_error = False
        return self._in_error

    def last_line(self) -> str:
        """The last output line that can explain a failure (an error, not an INFO line)."""
        if self.process.poll() is not None and self.pump is not None:
            self.pump.join(timeout=5)  # an exited server's last lines may still be in the pipe
        lines = [line.strip() for line in list(self.tail) if line.strip()]
        meaningful = [line for line in lines if not _NOISE.search(line)]
        return (meaningful or lines or ["(no output)"])[-1]

    def wait_healthy(self, health_url: str, deadline_s: float, stop: threading.Event) -> bool:
        """Poll ``/health`` until it answers 200 (True) or ``stop`` is set (False).

        Raises ServerStartError when the server exits first or the deadline passes.
        """
        deadline = time.monotonic() + deadline_s
        while not stop.is_set():
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"the MLflow server exited (code {self.process.returncode}) "
                    f"before answering {health_url}: {self.last_line()}"
                )
            if is_healthy(health_url):
                return True
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the MLflow server did not answer {health_url} within "
                    f"{deadline_s:g} s; stopped it. Last output: {self.last_line()}"
                )
            time.sleep(POLL_S)
        return False

    def run_until(self, stop: threading.Event) -> int:
        """Serve until ``stop`` is set (0), or until the server dies on its own (1)."""
        while not stop.is_set():
            if self.process.poll() is not None:
                print(
                    f"the MLflow server stopped (code {self.process.returncode}): {self.last_line()}", file=sys.stderr
                )
                return 1
            time.sleep(POLL_S)
        return 0

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the whole group, SIGKILL whatever is left after ``grace_s``; reap the leader.

        The group, not the process: ``mlflow server`` forwards SIGTERM to uvicorn only if it lives
        long enough, and a SIGKILLed leader would leave uvicorn holding the port.
        """
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            if self._group_gone_within(grace_s):
                break
        self.process.poll()
        if self.pump is not None:
            self.pump.join(timeout=5)

    def _group_gone_within(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            self.process.poll()  # reap the leader, or its zombie keeps the group alive
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM only set ``stop``: the serving loop then stops the server group itself,
    which an exception raised at an arbitrary point (mid-Popen) could not guarantee."""
    previous = [(sig, signal.signal(sig, lambda *_: stop.set())) for sig in (signal.SIGINT, signal.SIGTERM)]
    try:
        yield
    finally:
        for sig, handler in previous:
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def serve(
    tracking_uri: str,
    experiment: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    verbose: bool = False,
    artifacts: Path | None = None,
) -> int:
    """Serve the MLflow UI on a sweep's tracking store until SIGINT/SIGTERM; return the exit code.
    ``verbose``: pass all the server's output through (else only its errors). ``artifacts``: the
    sweep directory's ``artifacts/``, where the store's artifact locations are pointed first if
    the sweep was moved (``tracking.follow``), so the UI shows its files and models."""
    if is_server(tracking_uri):
        print(remote_hint(tracking_uri, experiment), flush=True)
        return 0
    check_port_free(host, port)
    print(f"starting the MLflow UI for {tracking_uri} ...", flush=True)
    stop = threading.Event()
    with stop_on_signals(stop):
        # Read the store before the server starts: a broken store fails here, and the two never
        # race to create the tables of a new database.
        if artifacts is not None:
            from sweep.stores import tracking

            tracking.follow(tracking_uri, experiment, artifacts)
        url = ui_url(tracking_uri, experiment, base_url(host, port))
        if stop.is_set():
            return 0
        server = Server.launch(server_command(tracking_uri, host, port), env=server_env(), quiet=not verbose)
        try:
            if not server.wait_healthy(f"{base_url(host, port)}/health", START_DEADLINE_S, stop):
                return 0
            print(f"MLflow UI ready: {url}  (Ctrl-C stops it)", flush=True)
            return server.run_until(stop)
        finally:
            server.stop()
