"""Passwords in store URLs and in the environment never show: not in the terminal, the sweep
directory, MLflow's params, tags and descriptions, Optuna's attributes or Ray's logs. A changed
password still resumes; a changed store does not, and its message shows no password. `sweep ui`
listens on 127.0.0.1.

Real parts only: PostgreSQL (trust auth here, so any password is accepted, which is what lets a
test change it), a real `mlflow server` started by `sweep ui`, the session's Ray, and the CLI as a
subprocess (its Ray workers are the test session's, which lack the driver's environment, as
workers on another node would).
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sweep.cli import main
from sweep.core import credentials
from sweep.core.config import SWEEP, load_config
from sweep.core.errors import ConfigError
from sweep.execution.launch import check_resumable
from sweep.stores.sweepdir import Stores, SweepDir
from tests import services

REPO = Path(__file__).resolve().parent.parent
SECRETS = ("SECRET1", "SECRET2", "SECRET3", "SECRET4", "SECRET5", "SECRET6")
TINY = [
    "optimizers=[sgd]",
    "epochs=1",
    "batch_size=64",
    "workers=1",
    "pruner=none",
    "schedules=[constant]",
    "reeval_seeds=0",
    "report_figures=false",
]


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m sweep.cli`` running this worktree's code, with extra environment ``env``."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sweep.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def _files_leaking(directory: Path) -> dict[str, list[str]]:
    """Every file under ``directory`` (SQLite databases included, as bytes) that holds a secret."""
    found = {}
    for path in directory.rglob("*"):
        if path.is_file():
            leaks = _leaks(path.read_bytes().decode("latin-1"))
            if leaks:
                found[str(path)] = leaks
    return found


def _mlflow_text(tracking_uri: str, experiment: str) -> str:
    """Every param, tag and description of the experiment and of its runs, as one text."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert runs
    parts = [repr(exp.tags), exp.artifact_location]
    for run in runs:
        parts += [repr(run.data.params), repr(run.data.tags), run.info.artifact_uri or "", run.info.run_name or ""]
    return "\n".join(parts)


def _optuna_text(storage_url: str, sweep_name: str) -> str:
    """Every study's and trial's attributes, as one text."""
    import optuna

    from sweep.stores.studies import open_storage

    storage = open_storage(storage_url)
    parts = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if not summary.study_name.startswith(f"{sweep_name}/"):
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        study_id = storage.get_study_id_from_name(summary.study_name)
        parts += [repr(study.user_attrs), repr(storage.get_study_system_attrs(study_id))]
        parts += [repr((t.params, t.user_attrs, t.system_attrs)) for t in study.trials]
    assert parts
    return "\n".join(parts)


def _ray_logs_leaking() -> dict[str, list[str]]:
    """The session Ray's log files that hold a secret (its workers ran the trials)."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())  # noqa: SLF001 - where Ray logs
    return _files_leaking(session / "logs")


def _trial_count(storage_url: str, study: str) -> int:
    import optuna

    from sweep.stores.studies import open_storage

    return len(optuna.load_study(study_name=study, storage=open_storage(storage_url)).trials)


# ---- the one module that knows where a secret sits -------------------------------------------


def test_split_and_redact_store_urls():
    assert credentials.split("postgresql://me:SECRET1@db:5432/optuna") == ("postgresql://me@db:5432/optuna", "SECRET1")
    assert credentials.split("http://me:SECRET2@mlflow:5000") == ("http://mlflow:5000", "me:SECRET2")
    assert credentials.split("sqlite:////tmp/a.db") == ("sqlite:////tmp/a.db", None)
    assert credentials.split("postgresql://me@db/optuna") == ("postgresql://me@db/optuna", None)
    assert credentials.redacted("postgresql://me:SECRET1@db/optuna") == "postgresql://me:***@db/optuna"
    assert credentials.redacted("https://me:SECRET2@mlflow") == "https://***@mlflow"
    text = (
        "API request to http://u:SECRET2@127.0.0.1:5000/api/2.0/mlflow/runs/get failed; "
        "(psycopg) postgresql+psycopg://me:SECRET1@db/x; password SECRET4 was wrong"
    )
    masked = credentials.redact(text, "mysql://me:SECRET4@db/x")
    assert _leaks(masked) == [] and masked.count("***") == 3, masked


def test_reprs_and_saved_config_hold_no_password(tmp_path):
    cfg = load_config(
        "quickstart",
        ["storage=postgresql://me:SECRET1@db/optuna", "tracking_uri=http://me:SECRET2@mlflow:5000"],
        default="quickstart",
        mode=SWEEP,
    )
    assert cfg.storage.endswith(":SECRET1@db/optuna")  # kept in memory: the sweep connects with it
    stores = Stores(cfg.storage, cfg.tracking_uri)
    from sweep.execution.worker import TrialTask

    task = TrialTask(stores, "s/sgd", 0, "run", "none", cfg.trial_config(), credentials={"PGPASSWORD": "SECRET3"})
    for shown in (repr(cfg), repr(stores), repr(task), str(cfg.to_dict())):
        assert _leaks(shown) == [], shown
    assert "SECRET3" in pickle.dumps(task).decode("latin-1")  # shipped to the worker inside the task
    sweep_dir = SweepDir(tmp_path / "s")
    sweep_dir.path.mkdir()
    sweep_dir.write_config(cfg.to_dict())
    saved = (sweep_dir / "sweep.yaml").read_text()
    assert _leaks(saved) == [] and "postgresql://me@db/optuna" in saved and "http://mlflow:5000" in saved


def test_resume_compares_stores_without_passwords(tmp_path):
    old = load_config("quickstart", ["storage=postgresql://me:SECRET1@db/optuna"], default="quickstart", mode=SWEEP)
    saved = old.to_dict()
    again = load_config("quickstart", ["storage=postgresql://me:SECRET4@db/optuna"], default="quickstart", mode=SWEEP)
    assert check_resumable(again, saved).storage.endswith(":SECRET4@db/optuna")  # the new password is used
    unset = load_config("quickstart", [], default="quickstart", mode=SWEEP)
    assert check_resumable(unset, saved).storage == "postgresql://me@db/optuna"  # password from PGPASSWORD
    old_style = {**saved, "storage": "postgresql://me:SECRET1@db/optuna"}  # saved before passwords were left out
    assert check_resumable(again, old_style).storage == again.storage
    for other in ("postgresql://me:SECRET4@db/other", "postgresql://you:SECRET4@db/optuna"):
        changed = load_config("quickstart", [f"storage={other}"], default="quickstart", mode=SWEEP)
        with pytest.raises(ConfigError) as refused:
            check_resumable(changed, old_style)
        assert _leaks(str(refused.value)) == [] and "postgresql://me@db/optuna" in str(refused.value)
        assert credentials.public(other) in str(refused.value)


def test_environment_is_set_for_the_block_only(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "driver-user")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with credentials.environment({"PGPASSWORD": "SECRET3", "MLFLOW_TRACKING_USERNAME": "task-user"}):
        assert os.environ["PGPASSWORD"] == "SECRET3" and os.environ["MLFLOW_TRACKING_USERNAME"] == "task-user"
    assert "PGPASSWORD" not in os.environ and os.environ["MLFLOW_TRACKING_USERNAME"] == "driver-user"


# ---- error paths: the message says what failed, never the password ---------------------------


def test_print_config_and_bad_values_mask_passwords(tmp_path, capsys):
    assert (
        main(
            [
                "run",
                "quickstart",
                "storage=postgresql://me:SECRET1@db/optuna",
                "tracking_uri=http://me:SECRET2@mlflow:5000",
                "--print-config",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert _leaks(out) == [] and "storage: postgresql://me:***@db/optuna" in out and "http://***@mlflow:5000" in out
    assert main(["run", "quickstart", "storage=postgresql://me:SECRET1@db"]) == 2  # no database: a bad value
    err = capsys.readouterr().err
    assert err.startswith("sweep: error: storage:") and _leaks(err) == [] and "me:***@db" in err


@pytest.mark.slow  # a real connection attempt, and the engine's imports
def test_unreachable_storage_message_is_masked(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(["run", "quickstart", f"output_dir={out}", "storage=postgresql://me:SECRET1@127.0.0.1:1/optuna", *TINY])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("sweep: error: storage: cannot connect to postgresql://me:***@127.0.0.1:1/optuna")
    assert _leaks(err) == [] and not out.exists()


class _HealthOnly(BaseHTTPRequestHandler):
    """Answers /health like an MLflow server, and drops every API request: MLflow's client then
    raises an error that quotes the request's whole URL."""

    def do_GET(self):
        if self.path == "/health":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
        else:
            self.close_connection = True

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_unexpected_tracking_error_is_masked_in_terminal_and_driver_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once, not after minutes
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "SECRET3")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "out"
        (out / "broken").mkdir(parents=True)  # the sweep directory exists: the traceback goes to driver.log
        uri = f"http://me:SECRET2@127.0.0.1:{server.server_port}"
        assert main(["run", "quickstart", f"output_dir={out}", "name=broken", f"tracking_uri={uri}", *TINY]) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    log = (out / "broken" / "driver.log").read_text()
    assert f"http://***@127.0.0.1:{server.server_port}" in err and "driver.log" in err, err
    assert _leaks(err) == [] and _leaks(log) == [] and "***@127.0.0.1" in log, log


# ---- real sweeps through the CLI ---------------------------------------------------------------


@pytest.fixture
def pg_database():
    """A database of its own on the test server, dropped afterwards (Ray workers may still hold
    pooled connections to it: FORCE closes them)."""
    import psycopg

    name = f"creds_{uuid.uuid4().hex[:10]}"
    admin = services.pg_url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}://{(userinfo or 'postgres').split(':')[0]}:{password}@{host}"


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_sweep_shows_no_password_and_resumes_when_it_changes(
    ray_address, tmp_path, pg_database, capsys, monkeypatch
):
    """The first run is the CLI in a subprocess; the resumes run in this process (a subprocess costs
    ~20 s here), with the session's Ray, whose workers never had this process's PGPASSWORD."""
    out, name = tmp_path / "out", "pgcreds"
    url = services.pg_url(pg_database)
    base = ["--output-dir", str(out), f"ray_address={ray_address}"]
    terminal = []

    first = _cli(
        "run", "quickstart", f"name={name}", f"storage={_with_password(url, 'SECRET1')}", "trials=2", *TINY, *base
    )
    terminal.append(first.stdout + first.stderr)
    assert first.returncode == 0, first.stderr
    # the password changed: given again in the URL, it resumes (and tops up to 3)
    assert main(["resume", name, f"storage={_with_password(url, 'SECRET4')}", "trials=3", *base]) == 0
    terminal.append("".join(capsys.readouterr()))
    public = credentials.public(url)
    assert _trial_count(public, f"{name}/sgd") == 3
    # no password in the URL: the saved one has none, and libpq reads PGPASSWORD (in the driver, and
    # in the workers, which get it inside each task)
    monkeypatch.setenv("PGPASSWORD", "SECRET5")
    assert main(["resume", name, "trials=4", *base]) == 0
    terminal.append("".join(capsys.readouterr()))
    assert _trial_count(public, f"{name}/sgd") == 4
    # another database is another store: refused, and the message shows neither password
    other = _with_password(services.pg_url(f"{pg_database}_other"), "SECRET6")
    assert main(["resume", name, f"storage={other}", *base]) == 2
    refused = capsys.readouterr().err
    assert refused.startswith("sweep: error: storage: sweep 'pgcreds' exists with storage=") and public in refused
    terminal.append(refused)

    assert [_leaks(text) for text in terminal] == [[]] * 4, terminal
    sweep_dir = out / name
    assert _files_leaking(sweep_dir) == {}
    assert f"storage: {public}" in (sweep_dir / "sweep.yaml").read_text()
    assert _leaks(_mlflow_text(f"sqlite:///{sweep_dir / 'mlflow.db'}", name)) == []
    assert _leaks(_optuna_text(public, name)) == []
    assert _ray_logs_leaking() == {}


@pytest.mark.slow
@pytest.mark.postgres
def test_libpq_in_a_ray_worker_reads_the_password_shipped_with_the_task(ray_address, pg_database):
    """What a worker on another node does with the driver's PGPASSWORD: set for the task, read by
    libpq on a real connection, gone afterwards."""
    import ray

    @ray.remote(num_cpus=0)
    def connect(url: str, shipped: dict[str, str]):
        import psycopg

        with credentials.environment(shipped), psycopg.connect(url) as conn:
            used = conn.info.password
        return used, os.environ.get("PGPASSWORD")

    used, after = ray.get(connect.remote(services.pg_url(pg_database), {"PGPASSWORD": "SECRET5"}))
    assert (used, after) == ("SECRET5", None)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (IPv4 and IPv6), from /proc."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """`sweep ui` at its default host, serving a sweep's SQLite tracking store: a real MLflow
    tracking server, yielded as (port, its tracking store's URI)."""
    directory = tmp_path_factory.mktemp("ui")
    tracking = f"sqlite:///{directory / 'mlflow.db'}"
    cfg = load_config(
        "quickstart",
        [f"output_dir={directory}", "name=served", f"tracking_uri={tracking}"],
        default="quickstart",
        mode=SWEEP,
    )
    sweep_dir = SweepDir.of(cfg.output_dir, cfg.name)
    sweep_dir.path.mkdir(parents=True)
    sweep_dir.write_config(cfg.to_dict())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep.cli", "ui", "served", "--output-dir", str(directory), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        ready = next((line for line in proc.stdout if "MLflow UI ready" in line), None)
        assert ready is not None, "sweep ui exited before its server answered"
        yield port, tracking
    finally:
        os.kill(proc.pid, 15)  # `sweep ui` stops its whole server on SIGTERM
        proc.wait(timeout=30)


@pytest.mark.slow
def test_sweep_ui_listens_on_loopback_only(ui_server):
    port, _ = ui_server
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, little-endian hex; nothing on IPv6


@pytest.mark.slow
def test_http_tracking_sweep_shows_no_password(ray_address, tmp_path, ui_server):
    """Basic-auth credentials in the URL and in the environment (the server has no auth and ignores them)."""
    port, served_store = ui_server
    out, name = tmp_path / "out", "httpcreds"
    run = _cli(
        "run",
        "quickstart",
        f"name={name}",
        f"tracking_uri=http://me:SECRET2@127.0.0.1:{port}",
        "trials=2",
        *TINY,
        "--output-dir",
        str(out),
        f"ray_address={ray_address}",
        env={"MLFLOW_TRACKING_USERNAME": "envuser", "MLFLOW_TRACKING_PASSWORD": "SECRET3"},
    )
    assert run.returncode == 0, run.stderr
    assert _leaks(run.stdout + run.stderr) == []
    sweep_dir = out / name
    assert _files_leaking(sweep_dir) == {}
    assert re.search(rf"tracking_uri: http://127\.0\.0\.1:{port}\n", (sweep_dir / "sweep.yaml").read_text())
    assert _leaks(_mlflow_text(f"http://127.0.0.1:{port}", name)) == []
    assert _files_leaking(Path(served_store.removeprefix("sqlite:///")).parent) == {}  # the server's store
    assert _ray_logs_leaking() == {}


@pytest.mark.parametrize(
    "key, url",
    [
        ("storage", "postgresql://sweep:PA/ZZ@db/optuna"),  # SQLAlchemy would connect with "PA/ZZ"
        ("storage", "postgresql://sweep:PA?ZZ@db/optuna"),
        ("tracking_uri", "http://me:PA#ZZ@mlflow:5000"),
    ],
)
def test_unencoded_password_refused_without_showing_it(tmp_path, capsys, key, url):
    """URL parsers end the host part at the first / ? #: the password would hide from the masking,
    so such a URL is refused (one line, exit 2, nothing written) and the value is not printed."""
    out = tmp_path / "out"
    assert main(["run", f"{key}={url}", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sweep: error: {key}: ") and "percent-encoded" in err and "ZZ" not in err, err
    assert not out.exists()
    encoded = url.replace("PA/ZZ", "PA%2FZZ").replace("PA?ZZ", "PA%3FZZ").replace("PA#ZZ", "PA%23ZZ")
    cfg = load_config(None, [f"{key}={encoded}"], default="quickstart", mode=SWEEP)
    assert "ZZ" not in str(cfg.to_dict()[key])
