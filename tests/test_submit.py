"""`sweep submit`: refusals answer before any Ray contact; a real Ray head (its own, not the session's)
runs a submitted sweep to the end as a Ray job, against a real PostgreSQL storage."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import services

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def sweep_cli(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, importing this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sweep.cli", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


@pytest.mark.parametrize(
    "args, key",
    [
        (["storage=postgresql://sweep:hunter2@db/optuna", "output_dir=/sweeps"], "storage"),
        (["tracking_uri=http://me:hunter2@mlflow:5000", "output_dir=/sweeps"], "tracking_uri"),
        (["trials=0", "output_dir=/sweeps"], "trials"),
        (["no_such_key=1", "output_dir=/sweeps"], "no_such_key"),
        ([], "output_dir"),  # ./sweeps would be inside the job's temporary copy of the project
        (["output_dir=/sweeps", "storage=sqlite:///optuna.db"], "storage"),
    ],
)
def test_refused_before_submitting(args, key):
    # a closed port as the address: reaching Ray at all would fail with another message
    result = sweep_cli("submit", *args, "--address", "http://127.0.0.1:9", timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sweep: error: {key}: "), result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert result.stdout == ""


def test_entrypoint_runs_the_same_config_on_the_head():
    from sweep import submit

    cfg, entrypoint = submit.load("quickstart", ["trials=2", "output_dir=/sweeps", "ray_address=10.0.0.1:6379"])
    assert entrypoint.split()[:5] == ["python", "-m", "sweep.cli", "run", "quickstart"]
    assert entrypoint.endswith("ray_address=auto")  # the driver joins the cluster it runs on
    env = submit.runtime_env()
    assert Path(env["working_dir"]) == REPO and {".env", ".venv", ".git", "sweeps", "data"} <= set(env["excludes"])


def test_unreachable_job_server_is_one_line():
    result = sweep_cli("submit", "output_dir=/sweeps", "--address", "http://127.0.0.1:9", timeout=30)
    assert result.returncode == 2 and result.stderr.startswith("sweep: error: --address: no Ray job server")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass(frozen=True)
class RayHead:
    address: str  # the dashboard (job server)
    env: dict  # what a client needs: the cluster's token (Ray enables token auth by default)

    def job(self, job_id: str) -> dict:
        request = urllib.request.Request(
            f"{self.address}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


@pytest.fixture
def ray_head():
    """A Ray head of this test's own (`ray start --head --block` in its own process group, so
    teardown stops exactly it: `ray stop` would kill every Ray on the machine). Every port is free
    and chosen here; token auth is on, with a token of its own. The job's driver finds `python`
    (this venv's) on PATH, but not this checkout on PYTHONPATH: it must import the copy shipped in
    the job's runtime_env."""
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env_agent, metrics, node_manager, object_manager = (
        _free_ports(9)
    )
    temp_dir = tempfile.mkdtemp(prefix="ray-submit-", dir="/tmp")  # short: Ray's socket paths have a length limit
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env.update(auth, PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}",
            f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env=env,
        cwd=temp_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    head_info = RayHead(f"http://127.0.0.1:{dashboard}", auth)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert head.poll() is None, "ray start --head exited"
            try:
                head_info.job("none")
            except urllib.error.HTTPError as exc:
                if exc.code == 404:  # the job server answers
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Ray head's job server did not answer within 90 s"
            time.sleep(1)
        yield head_info
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # anything of this head's left in its process group
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def pg_database():
    """A PostgreSQL database of this test's own, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"submit_{uuid.uuid4().hex[:8]}"
    admin = create_engine(services.pg_url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield services.pg_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_submitted_sweep_runs_to_the_end_as_a_ray_job(ray_head, pg_database, tmp_path):
    import optuna

    from sweep.stores.studies import open_storage, study_name

    out = tmp_path / "sweeps"
    result = sweep_cli(
        "submit",
        "quickstart",
        "name=submitted",
        "optimizers=[sgd]",
        "trials=2",
        "epochs=1",
        "reeval_seeds=0",
        "report_figures=false",
        "batch_size=64",
        "workers=1",
        "schedules=[constant]",
        f"storage={pg_database}",
        f"output_dir={out}",
        "--address",
        ray_head.address,
        "--follow",
        timeout=240,
        env=ray_head.env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = result.stdout.split("submitted job ", 1)[1].split()[0]
    assert job_id.startswith("sweep-submitted-")
    assert f"ray job logs --follow {job_id} --address {ray_head.address}" in result.stdout
    assert f"ray job stop {job_id} --address {ray_head.address}" in result.stdout
    assert f"job {job_id} SUCCEEDED" in result.stderr
    assert "report: " in result.stdout  # the driver's own output, followed through the job's logs

    job = ray_head.job(job_id)
    assert job["status"] == "SUCCEEDED" and job["metadata"]["sweep_name"] == "submitted"
    assert job["entrypoint"].startswith("python -m sweep.cli run quickstart ")
    study = optuna.load_study(study_name=study_name("submitted", "sgd"), storage=open_storage(pg_database))
    assert len([t for t in study.trials if t.state.is_finished()]) == 2
    assert (out / "submitted" / "summary.json").is_file()  # the driver wrote where it was told, on the head

    # a client without the cluster's token gets one line, not a traceback
    refused = sweep_cli(
        "submit",
        f"output_dir={out}",
        "--address",
        ray_head.address,
        timeout=60,
        env={"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": ""},
    )
    assert refused.returncode == 2 and refused.stderr.startswith("sweep: error: --address: the Ray cluster at "), (
        refused.stderr
    )


def test_a_benchmark_is_submitted_whole_and_its_output_dir_checked():
    from sweep import submit
    from sweep.core.errors import ConfigError

    cfg, entrypoint = submit.load("benchmark", ["benchmark.studies=3", "output_dir=/sweeps"])
    assert entrypoint.split()[:5] == ["python", "-m", "sweep.cli", "run", "benchmark"]
    assert "benchmark.studies=3" in entrypoint.split() and entrypoint.endswith("ray_address=auto")
    assert (cfg.name, cfg.output_dir) == ("benchmark", "/sweeps")
    with pytest.raises(ConfigError, match="^output_dir: "):
        submit.load("benchmark", [])  # ./sweeps would be inside the job's temporary copy
