"""`sweep submit`: run the sweep driver itself as a Ray job, so it outlives the submitting laptop.

The job's entrypoint is ``python -m sweep.cli run CONFIG key=value ... ray_address=auto`` on the
head node (Ray's Jobs API, through the dashboard's HTTP address); the project's source travels in
the job's ``runtime_env`` as its ``working_dir``. The config is checked here with the same
``load_config`` as ``sweep run`` before anything is submitted; the I/O checks (stores, resources)
run in the job, on the cluster, where the stores' host names resolve.

What the job cannot be given is refused here: a password in a store URL (Ray stores the entrypoint
with the job, readable by anyone with dashboard access: credentials belong in the nodes'
environment), and files the driver would write relative to its working directory (a temporary
copy of the project on the head node, deleted by Ray).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sweep.core import credentials
from sweep.core.benchmark import is_benchmark, load_benchmark
from sweep.core.config import SWEEP, SweepConfig, find_config, load_config, parse_overrides, read_yaml
from sweep.core.errors import ConfigError, first_line
from sweep.execution.preflight import file_of
from sweep.stores.sweepdir import SweepDir

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Never shipped: local state, caches, and .env (the compose stack's credentials).
EXCLUDES = [
    ".git",
    ".venv",
    ".env",
    "sweeps",
    "data",
    "mlruns",
    "mlartifacts",
    "tests",
    "bench",
    "k8s",
    "docker",
    "build",
    "dist",
    "*.egg-info",
    "**/__pycache__",
    ".pytest_cache",
]
SWEEP_NAME_METADATA = "sweep_name"
STOP_WAIT_S = 30
STOPPED_EXIT = 143  # `ray job stop` sends SIGTERM, which stops a sweep with 128 + 15


@dataclass(frozen=True)
class Job:
    """A submitted sweep: where it runs and how to reach it."""

    job_id: str
    address: str
    entrypoint: str
    cfg: SweepConfig


def default_address() -> str:
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def load(config: str | None, overrides: list[str]) -> tuple[SweepConfig, str]:
    """The config as `sweep run` would load it, checked for what a job cannot take, and the
    entrypoint that runs it on the head node. Raises ConfigError; submits nothing."""
    files = _given_files(config, overrides)
    if is_benchmark(config):  # the job runs the whole benchmark; its shared keys are checked
        bench, _ = load_benchmark(config, overrides)
        given = dict(read_yaml(find_config(config, "quickstart")))
        given.update(parse_overrides([o for o in overrides if not o.startswith("benchmark.")]))
        check_submittable(bench.base.replace(output_dir=str(given.get("output_dir") or "./sweeps")), files)
        cfg = bench.base.replace(name=bench.name, output_dir=bench.output_dir)
    else:
        cfg = load_config(config, overrides, default="quickstart", mode=SWEEP)
        check_submittable(cfg, files)
    words = [*([_shipped_config(config)] if config else []), *overrides, "ray_address=auto"]
    return cfg, shlex.join(["python", "-m", "sweep.cli", "run", *words])


def _shipped_config(config: str) -> str:
    """A config as the job finds it in its copy of the project: a name in conf/, or a path
    relative to the project root."""
    path = find_config(config, "quickstart").resolve()
    if path.parent == PROJECT_ROOT / "conf" and path.suffix == ".yaml":
        return path.stem
    if not path.is_relative_to(PROJECT_ROOT):
        raise ConfigError(
            "config",
            f"{path} is outside the project ({PROJECT_ROOT}), which is what the job ships; "
            "copy it into conf/ or give its keys as key=value",
        )
    return str(path.relative_to(PROJECT_ROOT))


def _given_files(config: str | None, overrides: list[str]) -> dict[str, str]:
    """The store URLs as written (the config file, then the overrides) that name files: loading
    makes them absolute on this machine, but the job resolves them on the head node."""
    given = {
        key: value
        for key, value in read_yaml(find_config(config, "quickstart")).items()
        if key in ("storage", "tracking_uri")
    }
    given.update((key, value) for key, value in parse_overrides(list(overrides)) if key in ("storage", "tracking_uri"))
    return {key: value for key, value in given.items() if isinstance(value, str) and file_of(value) is not None}


def check_submittable(cfg: SweepConfig, given_files: dict[str, str]) -> None:
    for key in ("storage", "tracking_uri"):
        url = getattr(cfg, key)
        if url and credentials.split(url)[1]:
            raise ConfigError(
                key,
                "has a password, and a password in the job's entrypoint would be stored by Ray "
                "with the job; put PGPASSWORD / MLFLOW_TRACKING_PASSWORD in the cluster nodes' "
                "environment instead",
            )
    if not Path(cfg.output_dir).is_absolute():
        raise ConfigError(
            "output_dir",
            f"{cfg.output_dir} is relative, and the job runs in a temporary copy of the "
            "project on the head node; give a folder there that stays (output_dir=/sweeps)",
        )
    for key, url in given_files.items():
        if not url.partition(":///")[2].startswith(("/", "~")):
            raise ConfigError(
                key,
                f"{url} is a file relative to the job's temporary copy of the project; use an "
                "absolute path on the head node, or a server (postgresql://USER@HOST/DB, "
                "http://MLFLOW:5000)",
            )


def local_files(cfg: SweepConfig) -> list[str]:
    """The stores that are files: paths on the head node, which trials on other nodes reach only
    through a shared filesystem."""
    stores = SweepDir.of(cfg.output_dir, cfg.name).stores(cfg.storage, cfg.tracking_uri)
    return [url for url in (stores.storage, stores.tracking_uri) if file_of(url) is not None]


def runtime_env() -> dict:
    """The project's source as the job's working directory (the entrypoint's cwd, so
    ``python -m sweep.cli`` imports it); conf/ travels with it."""
    if not (PROJECT_ROOT / "conf").is_dir() or not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise ConfigError(
            "submit",
            f"{PROJECT_ROOT} is not the project's source checkout (no conf/ or "
            "pyproject.toml); install it with `pip install -e .` from a checkout",
        )
    # `ray job stop` sends SIGTERM, which stops the sweep like Ctrl-C; Ray kills the driver after
    # RAY_JOB_STOP_WAIT_TIME_S (3 s by default), read from the job's env: room to close its runs
    env_vars = {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}
    return {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES, "env_vars": env_vars}


def submission_id(name: str) -> str:
    return f"sweep-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ConfigError(
            "--address",
            f"the Ray cluster at {address} asks for its token: set RAY_AUTH_MODE=token "
            "and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as for `ray job submit`",
        ) from None
    except Exception as exc:  # refused, unknown host, not a Ray dashboard
        raise ConfigError(
            "--address",
            f"no Ray job server answers at {address} ({first_line(exc, 200)}); "
            f"give the head's dashboard address (http://HEAD:8265) or set {ADDRESS_ENV}",
        ) from None


def submit(cfg: SweepConfig, entrypoint: str, address: str) -> Job:
    """Submit the driver; refused while a job of the same sweep is still pending or running there."""
    client = _client(address)
    env = runtime_env()
    for job in client.list_jobs():
        if (job.metadata or {}).get(SWEEP_NAME_METADATA) == cfg.name and not job.status.is_terminal():
            raise ConfigError(
                "name",
                f"sweep {cfg.name!r} is already {job.status.value.lower()} on {address} as job "
                f"{job.submission_id}; follow it or stop it (ray job stop {job.submission_id})",
            )
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=env,
        submission_id=submission_id(cfg.name),
        metadata={SWEEP_NAME_METADATA: cfg.name, "sweep_output_dir": cfg.output_dir},
    )
    return Job(job_id, address, entrypoint, cfg)


def instructions(job: Job) -> str:
    """How to follow, watch and stop the job, printed once it is submitted."""
    where = f"--address {job.address}"
    tracking = job.cfg.tracking_uri
    results = (
        f"MLflow:  {tracking} (the tracking server's UI)"
        if tracking and credentials.is_server(tracking)
        else f"MLflow:  on the head node: sweep ui {job.cfg.name} --output-dir {job.cfg.output_dir}"
    )
    lines = [
        f"submitted job {job.job_id} to {job.address}",
        f"driver:  {job.entrypoint}",
        f"follow:  ray job logs --follow {job.job_id} {where}",
        f"status:  ray job status {job.job_id} {where}",
        results,
        f"stop:    ray job stop {job.job_id} {where}  (trials in flight run again when the same command "
        "is submitted again)",
    ]
    files = local_files(job.cfg)
    if files:
        lines.append(
            f"note:    {', '.join(files)} are files on the head node: trials on other nodes need them "
            "on a shared filesystem"
        )
    return "\n".join(lines)


def follow(job: Job) -> int:
    """Print the job's logs until it ends; its driver's exit code (or one for its status)."""
    from ray.job_submission import JobStatus

    client = _client(job.address)

    async def tail():
        async for chunk in client.tail_job_logs(job.job_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())
    info = client.get_job_info(job.job_id)
    while not info.status.is_terminal():  # the log stream can close a moment before the status is final
        time.sleep(0.5)
        info = client.get_job_info(job.job_id)
    print(f"job {job.job_id} {info.status.value}" + (f": {info.message}" if info.message else ""), file=sys.stderr)
    if info.driver_exit_code is not None:
        return info.driver_exit_code
    return {JobStatus.SUCCEEDED: 0, JobStatus.STOPPED: STOPPED_EXIT}.get(info.status, 1)
