"""``sweep ui`` (sweep.ui.serve) against real ``mlflow server`` processes: no mocks.

Each slow test starts one server (5-50 s on 2 cores); the tests that only need one running share
a module-scoped one. Every process started here is killed in a fixture teardown, test failed or not.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweep.ui import Server, ServerStartError, base_url, is_healthy, runs_table_url, serve

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "ui-test"
URL_TIMEOUT_S = 240  # a cold server start on 2 loaded cores takes up to ~50 s
SERVE = (
    "import sys; from sweep.core.errors import ConfigError; from sweep.ui import serve\n"
    "try:\n    sys.exit(serve(sys.argv[1], sys.argv[2], '127.0.0.1', int(sys.argv[3])))\n"
    "except ConfigError as exc:\n    print(exc, file=sys.stderr); sys.exit(2)\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_bindable(port: int) -> bool:
    """What a new server does: SO_REUSEADDR, bind and listen (TIME_WAIT leftovers don't count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def make_store(directory: Path) -> tuple[str, str]:
    """A sqlite MLflow store holding one experiment with one finished run; (uri, experiment id)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=str(directory / "artifacts"))
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "val_accuracy", 0.5)
    client.set_terminated(run.info.run_id)
    return uri, exp_id


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    cmdline: str


def processes() -> list[Proc]:
    """Every live process, from /proc (the fields after the command name in /proc/PID/stat)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid, pgid, sid = stat.rsplit(")", 1)[1].split()[:4]
        if state != "Z":
            found.append(Proc(int(entry), int(ppid), int(pgid), int(sid), cmdline))
    return found


def in_sessions(sids: set[int]) -> list[Proc]:
    return [p for p in processes() if p.sid in sids]


def kill_groups(pgids: set[int]) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Serving:
    """``serve`` running in a subprocess (its own session), stdout read line by line."""

    def __init__(self, uri: str, port: int, stderr: Path):
        self.uri, self.port = uri, port
        self.stderr_path = stderr
        self.others = self.server_sessions()  # servers on this store that are not ours to kill
        with open(stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE, uri, EXPERIMENT, str(port)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout_s: float) -> str:
        line = self.lines.get(timeout=timeout_s)
        assert line is not None, f"serve exited ({self.proc.poll()}): {self.stderr()[-2000:]}"
        return line

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def server_sessions(self) -> set[int]:
        """Sessions of the mlflow servers for this store (their leaders name the store in argv)."""
        return {p.sid for p in processes() if "mlflow server" in p.cmdline and self.uri in p.cmdline}

    def own_server_sessions(self) -> set[int]:
        return self.server_sessions() - self.others

    def kill(self) -> None:
        kill_groups(self.own_server_sessions() | {self.proc.pid})
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class Started:
    serving: Serving
    url_line: str
    health_at_url_line: bool
    exp_id: str


def start_ui(directory: Path) -> Started:
    """Run serve on a fresh store and free port; return once it printed its URL line."""
    uri, exp_id = make_store(directory)
    serving = Serving(uri, free_port(), directory / "serve.stderr")
    try:
        first = serving.next_line(timeout_s=30)
        assert first == f"starting the MLflow UI for {uri} ...", first
        url_line = serving.next_line(timeout_s=URL_TIMEOUT_S)
        healthy = is_healthy(f"{base_url('127.0.0.1', serving.port)}/health")  # the moment it is read
    except BaseException:
        serving.kill()
        raise
    return Started(serving, url_line, healthy, exp_id)


@pytest.fixture
def started_uis():
    """Starts UIs on demand; kills every process they started, whatever the test did."""
    started: list[Started] = []

    def start(directory: Path) -> Started:
        started.append(start_ui(directory))
        return started[-1]

    yield start
    for each in started:
        each.serving.kill()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One UI shared by the tests that only need it running."""
    ui = start_ui(tmp_path_factory.mktemp("ui"))
    yield ui
    ui.serving.kill()


@pytest.mark.slow
def test_url_printed_only_once_health_answers(running):
    base = base_url("127.0.0.1", running.serving.port)
    assert running.health_at_url_line, "the URL line came before /health answered"
    assert runs_table_url(base, running.exp_id) in running.url_line
    assert running.serving.proc.poll() is None


@pytest.mark.slow
def test_second_serve_on_a_busy_port_fails_fast(running, tmp_path):
    before = running.serving.server_sessions()
    second = Serving(running.serving.uri, running.serving.port, tmp_path / "second.stderr")
    try:
        began = time.monotonic()
        rc = second.proc.wait(timeout=30)
        elapsed = time.monotonic() - began
        lines = second.stderr().strip().splitlines()
        assert rc == 2 and elapsed < 5, (rc, elapsed, lines)
        assert lines == [
            f"port: 127.0.0.1:{running.serving.port} is already in use (another sweep ui "
            f"or MLflow server?); pick another with --port"
        ]
        assert second.lines.get(timeout=5) is None  # not even "starting ..."
        assert running.serving.server_sessions() == before  # no second server
        assert is_healthy(f"{base_url('127.0.0.1', running.serving.port)}/health")  # first one intact
    finally:
        second.kill()


@pytest.mark.slow
def test_http_uri_points_at_the_server_s_runs_table(running, capsys):
    base = base_url("127.0.0.1", running.serving.port)
    children = {p.pid for p in processes() if p.ppid == os.getpid()}
    assert serve(base, EXPERIMENT, "127.0.0.1", free_port()) == 0
    assert {p.pid for p in processes() if p.ppid == os.getpid()} <= children
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and runs_table_url(base, running.exp_id) in out[0], out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_whole_server_group_and_frees_the_port(started_uis, tmp_path, sig):
    ui = started_uis(tmp_path)
    serving = ui.serving
    sessions = serving.own_server_sessions()
    assert len(sessions) == 1 and serving.proc.pid not in sessions  # the server has its own session
    members = in_sessions(sessions)
    assert len(members) >= 2, members  # mlflow server + its uvicorn worker
    assert not port_bindable(serving.port)

    os.kill(serving.proc.pid, sig)  # to sweep ui only, as `kill` or a supervisor would
    assert serving.proc.wait(timeout=20) == 0, serving.stderr()[-2000:]
    for pgid in sessions | {serving.proc.pid}:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    assert in_sessions(sessions | {serving.proc.pid}) == []
    assert port_bindable(serving.port)


@pytest.mark.slow
def test_server_exiting_before_health_raises_with_its_error(tmp_path):
    """Another listener takes the port between the check and the server's bind: uvicorn logs
    "address already in use" and mlflow server exits 0; serve must report that line."""
    uri, _ = make_store(tmp_path)
    port = free_port()
    serving = Serving(uri, port, tmp_path / "serve.stderr")
    thief = socket.socket()
    try:
        assert serving.next_line(timeout_s=30).startswith("starting the MLflow UI")
        thief.bind(("127.0.0.1", port))  # the port check is done: it printed "starting"
        thief.listen()
        rc = serving.proc.wait(timeout=URL_TIMEOUT_S)
        last = serving.stderr().strip().splitlines()[-1]
        assert rc == 1, serving.stderr()[-2000:]
        assert last.startswith("sweep.ui.ServerStartError: the MLflow server exited"), last
        assert "address already in use" in last, last
        assert serving.lines.get(timeout=5) is None  # no URL line
        assert serving.own_server_sessions() == set()
    finally:
        thief.close()
        serving.kill()


def test_busy_port_refused_without_starting_anything(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        serving = Serving(f"sqlite:///{tmp_path / 'mlflow.db'}", port, tmp_path / "serve.stderr")
        try:
            began = time.monotonic()
            rc = serving.proc.wait(timeout=30)
            assert rc == 2 and time.monotonic() - began < 5
            assert serving.stderr().strip().splitlines() == [
                f"port: 127.0.0.1:{port} is already in use (another sweep ui or MLflow server?); "
                f"pick another with --port"
            ]
            assert not (tmp_path / "mlflow.db").exists()  # the store was not even opened
        finally:
            serving.kill()


def test_http_uri_with_no_server_prints_one_line_and_starts_nothing(capsys):
    base = base_url("127.0.0.1", free_port())  # nothing listens there
    children = {p.pid for p in processes() if p.ppid == os.getpid()}
    began = time.monotonic()
    assert serve(base, EXPERIMENT) == 0
    assert time.monotonic() - began < 10
    assert {p.pid for p in processes() if p.ppid == os.getpid()} <= children
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"experiment {EXPERIMENT!r} is logged to the MLflow server at {base}, which serves the UI itself: open {base}"
    ]


@pytest.mark.slow
def test_wait_healthy_gives_up_at_its_deadline_and_stop_kills_the_group():
    """A process that never answers /health; its child ignores SIGTERM, so stop must SIGKILL."""
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    parent = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
        f"print('ready', flush=True); time.sleep(120)"
    )
    server = Server.launch([sys.executable, "-c", parent])
    try:
        while "ready" not in server.tail:
            assert server.process.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)  # let the child install its SIG_IGN
        began = time.monotonic()
        with pytest.raises(ServerStartError, match=r"did not answer .* within 1\.5 s"):
            server.wait_healthy(f"{base_url('127.0.0.1', free_port())}/health", 1.5, threading.Event())
        assert 1.5 <= time.monotonic() - began < 10
        began = time.monotonic()
        server.stop(grace_s=2.0)
        assert time.monotonic() - began < 6  # SIGTERM, 2 s, SIGKILL, at most 2 s more
        # No live member left; a killed orphan may stay a zombie until PID 1 reaps it.
        assert [p for p in processes() if p.pgid == server.process.pid] == []
    finally:
        kill_groups({server.process.pid})


def test_exit_before_health_names_the_last_error_line():
    script = (
        "import sys; print('INFO: starting'); print('ERROR: [Errno 98] boom', flush=True); "
        "print('INFO: Application shutdown complete.'); sys.exit(0)"
    )
    server = Server.launch([sys.executable, "-c", script])
    try:
        with pytest.raises(ServerStartError, match=r"exited \(code 0\) .*: ERROR: \[Errno 98\] boom$"):
            server.wait_healthy(f"{base_url('127.0.0.1', free_port())}/health", 60, threading.Event())
    finally:
        server.stop()


def test_importing_the_module_does_not_import_mlflow():
    code = "import sys, sweep.ui; sys.exit('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def _browse(base: str) -> None:
    """What a browser does first: the page, an API call, a health check."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for path in ("/", "/ajax-api/2.0/mlflow/experiments/search?max_results=5", "/health"):
        with opener.open(f"{base}{path}", timeout=30) as response:
            assert response.status == 200, path


ACCESS_LINE = '"GET /ajax-api/2.0/mlflow/experiments/search?max_results=5 HTTP/1.1" 200'


@pytest.mark.slow
def test_server_output_is_kept_back_by_default(running):
    """Only the URL line on stdout, and nothing of the server's own on stderr: no start-up notices,
    no deprecation warning, no access-log line per request."""
    _browse(base_url("127.0.0.1", running.serving.port))
    time.sleep(3)  # the server has written its access-log lines by now (the verbose test waits for one)
    err = running.serving.stderr()
    assert '"GET /' not in err and "INFO" not in err and "Warning" not in err and "Uvicorn" not in err, err
    assert err.strip() == "", err


@pytest.mark.slow
def test_verbose_passes_the_server_output_through(tmp_path):
    """`sweep ui NAME --verbose` on a real sweep directory: the access log reaches stderr."""
    from sweep.core.config import SWEEP, load_config
    from sweep.stores.sweepdir import SweepDir

    cfg = load_config("quickstart", [f"output_dir={tmp_path}", "name=loud"], mode=SWEEP)
    SweepDir.of(cfg.output_dir, cfg.name).path.mkdir(parents=True)
    SweepDir.of(cfg.output_dir, cfg.name).write_config(cfg.to_dict())
    port = free_port()
    err_path = tmp_path / "ui.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sweep.cli",
                "ui",
                "loud",
                "--output-dir",
                str(tmp_path),
                "--port",
                str(port),
                "--verbose",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    try:
        ready = next((line for line in proc.stdout if "MLflow UI ready" in line), None)
        assert ready is not None, err_path.read_text(errors="replace")[-2000:]
        _browse(base_url("127.0.0.1", port))
        deadline = time.monotonic() + 30
        while ACCESS_LINE not in err_path.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.2)
        text = err_path.read_text(errors="replace")
        assert ACCESS_LINE in text and "Uvicorn running" in text, text[-2000:]
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # `sweep ui` stops its whole server group on SIGTERM
        assert proc.wait(timeout=30) == 0


def test_quiet_server_passes_on_its_errors_and_their_tracebacks_only(capfd):
    lines = [
        "Registry store URI not provided. Using backend store URI.",
        "/x/fastapi_app.py:23: StarletteDeprecationWarning: starlette.middleware.wsgi is deprecated",
        "2026/12/06 01:17:37 INFO:     Uvicorn running on http://127.0.0.1:5077 (Press CTRL+C to quit)",
        '2026/12/06 01:17:38 INFO:     127.0.0.1:58278 - "GET /health HTTP/1.1" 200 OK',
        "2026/12/06 01:17:39 ERROR:    Exception in ASGI application",
        "Traceback (most recent call last):",
        '  File "/x/app.py", line 3, in handler',
        "sqlite3.OperationalError: disk I/O error",
        '2026/12/06 01:17:40 INFO:     127.0.0.1:58280 - "GET / HTTP/1.1" 200 OK',
    ]
    script = f"import sys; sys.stdout.write({chr(10).join(lines) + chr(10)!r}); sys.stdout.flush()"
    server = Server.launch([sys.executable, "-c", script], quiet=True)
    server.process.wait(timeout=30)
    server.pump.join(timeout=10)
    assert capfd.readouterr().err.splitlines() == lines[4:8]
    assert list(server.tail) == lines  # all kept, to explain a failed start
