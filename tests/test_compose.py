"""docker-compose.yml, resolved by a real Compose implementation (no Docker engine runs here:
`docker-compose config` checks a file without one) with a .env made from .env.example, then
checked for consistency with the code that will run in it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests import services

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ENV_EXAMPLE = dict(
    line.split("=", 1)
    for line in (ROOT / ".env.example").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)
HEALTHY, DONE = "service_healthy", "service_completed_successfully"


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def run_compose(env_file: Path) -> subprocess.CompletedProcess:
    command = compose_command()
    if command is None:
        reason = (
            "no Compose implementation (docker-compose or the docker compose plugin): apt-get install docker-compose"
        )
        if services.in_ci():
            pytest.fail(f"{reason}, and CI is set: .ci/run installs it", pytrace=False)
        pytest.skip(reason)
    # only the env file speaks: a variable of the same name in this process would win over it
    env = {k: v for k, v in os.environ.items() if k not in ENV_EXAMPLE}
    return subprocess.run(
        [*command, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    shutil.copy(ROOT / ".env.example", env_file)
    result = run_compose(env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def words(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else list(command)


def option(service: dict, name: str) -> str:
    argv = words(service)
    for i, word in enumerate(argv):
        if word == name:
            return argv[i + 1]
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def test_every_credential_must_come_from_env(tmp_path):
    """Without a .env Compose refuses to start, naming the variable and where to set it."""
    empty = tmp_path / ".env"
    empty.write_text("")
    result = run_compose(empty)
    assert result.returncode != 0
    assert "in .env (see .env.example)" in result.stderr


def test_no_secret_literals():
    """Every secret-like value in the file is a ${VAR} from .env; no URL carries a password."""
    for name, service in RAW["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_LIKE.search(key) or key.endswith("_USER"):
                assert str(value).startswith("${"), f"{name}: {key} is a literal"
    text = (ROOT / "docker-compose.yml").read_text()
    for url in re.findall(r"[a-z0-9+]+://[^\s'\"]+", text):
        assert urlparse(url.replace("${", "").replace("}", "")).password is None, url
    assert all(value.startswith("replace-me") or not SECRET_LIKE.search(key) for key, value in ENV_EXAMPLE.items())


def test_ports_are_published_on_loopback_only(resolved):
    published = [(name, port) for name, service in resolved.items() for port in service.get("ports", [])]
    assert published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_healthchecks_and_start_order(resolved):
    for name in ("postgres", "minio", "mlflow", "ray-head"):
        assert resolved[name]["healthcheck"]["test"], name
    assert "/health" in " ".join(resolved["mlflow"]["healthcheck"]["test"])
    needs = {
        "minio-init": {"minio": HEALTHY},
        "mlflow": {"postgres": HEALTHY, "minio-init": DONE},
        "ray-head": {"postgres": HEALTHY, "mlflow": HEALTHY},
        "ray-worker": {"ray-head": HEALTHY},
        "ray-worker-gpu": {"ray-head": HEALTHY},
        "submit": {"ray-head": HEALTHY},
    }
    for name, wanted in needs.items():
        got = {dep: spec["condition"] for dep, spec in resolved[name]["depends_on"].items()}
        assert got == wanted, name


def test_gpu_worker_reserves_gpus_on_a_cuda_image(resolved):
    gpu = resolved["ray-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["profiles"] == ["gpu"]  # a host without GPUs still starts the stack as it is
    assert gpu["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"  # torch wheels with CUDA
    assert gpu["image"] != resolved["ray-worker"]["image"]
    assert words(gpu) == words(resolved["ray-worker"])
    assert "deploy" not in resolved["ray-worker"]  # the CPU worker scales with --scale anywhere


def test_every_service_the_sweep_names_exists(resolved):
    """The submitted sweep's addresses, the workers' head, MLflow's stores: each is a service
    listening where it is called."""
    from sweep import submit

    argv = words(resolved["submit"])
    assert argv[:2] == ["sweep", "submit"]
    config, overrides = argv[2], [w for w in argv[3:] if "=" in w and not w.startswith("-")]
    cfg, entrypoint = submit.load(config, overrides)  # checked exactly as `sweep submit` checks it
    assert "ray_address=auto" in entrypoint
    head_address = urlparse(option(resolved["submit"], "--address"))
    assert head_address.hostname == "ray-head" and head_address.port == int(
        option(resolved["ray-head"], "--dashboard-port")
    )
    for worker in ("ray-worker", "ray-worker-gpu"):
        assert option(resolved[worker], "--address") == f"ray-head:{option(resolved['ray-head'], '--port')}"

    databases = re.findall(r"CREATE DATABASE (\w+)", (ROOT / "docker" / "initdb.sql").read_text())
    storage = urlparse(cfg.storage)
    assert storage.hostname == "postgres" and storage.password is None and storage.path.strip("/") in databases
    backend = urlparse(option(resolved["mlflow"], "--backend-store-uri"))
    assert backend.hostname == "postgres" and backend.path.strip("/") in databases
    assert storage.path != backend.path  # Optuna and MLflow each keep an alembic_version table

    tracking = urlparse(cfg.tracking_uri)
    assert tracking.hostname == "mlflow" and tracking.port == int(option(resolved["mlflow"], "--port"))
    assert f"mlflow:{tracking.port}" in option(resolved["mlflow"], "--allowed-hosts").split(",")
    mlflow_env = resolved["mlflow"]["environment"]
    assert urlparse(mlflow_env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    bucket = urlparse(option(resolved["mlflow"], "--artifacts-destination"))
    assert bucket.scheme == "s3" and bucket.hostname == resolved["minio-init"]["environment"]["MLFLOW_BUCKET"]
    assert Path(cfg.output_dir) in [Path(v.split(":")[1]) for v in resolved["ray-head"]["volumes"]]

    for name, service in resolved.items():  # every host any service calls (commands, env) is a service
        text = " ".join([*words(service), *map(str, (service.get("environment") or {}).values())])
        hosts = re.findall(r"(?:https?|postgresql)://(?:\w+@)?([a-z][a-z0-9-]*)[:/]", text)
        hosts += re.findall(r"--address[= ]([a-z][a-z0-9-]*):\d", text)
        for host in hosts:
            assert host in resolved or host == "localhost", f"{name} calls {host}"


def test_postgres_clients_get_the_password_from_env(resolved):
    for name in ("mlflow", "ray-head", "ray-worker", "ray-worker-gpu"):
        assert resolved[name]["environment"]["PGPASSWORD"] == ENV_EXAMPLE["POSTGRES_PASSWORD"], name
    assert "environment" not in resolved["submit"]  # submitting needs no credential


def test_image_holds_every_package_and_s3_support():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("sweep", "models", "optim", "conf"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'pip install --no-cache-dir -e ".[s3]"' in dockerfile and "ARG TORCH_INDEX_URL" in dockerfile
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
