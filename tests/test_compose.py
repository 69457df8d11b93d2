"""The compose file cannot run here (no Docker engine), so check it against the real config code."""
from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from sweep.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_present_and_wired():
    services = COMPOSE["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "sweep"} <= set(services)
    for name, service in services.items():
        if name != "postgres":
            assert service["build"] == "." and service["image"] == "optimizer-sweep:latest"
    assert "ray-head:6379" in services["ray-worker"]["command"]
    assert services["mlflow"]["ports"] == ["5000:5000"]
    init = services["postgres"]["volumes"][1].split(":")[0]
    sql = (ROOT / init).read_text()
    assert "CREATE DATABASE optuna" in sql and "CREATE DATABASE mlflow" in sql


def test_sweep_command_is_a_valid_config():
    words = shlex.split(COMPOSE["services"]["sweep"]["command"])
    assert words[:3] == ["sweep", "run", "cifar10"]
    cfg = load_config(words[2], words[3:], mode="sweep")
    assert cfg.storage.startswith("postgresql://") and cfg.tracking_uri == "http://mlflow:5000"
    assert cfg.ray_address == "ray-head:6379"
    mlflow_command = COMPOSE["services"]["mlflow"]["command"]
    mlflow_uri = mlflow_command.split("--backend-store-uri ")[1].split()[0]
    assert mlflow_uri.endswith("/mlflow") and cfg.storage.endswith("/optuna")
    allowed = mlflow_command.split("--allowed-hosts ")[1].split()[0].split(",")
    assert "mlflow:5000" in allowed  # the Host header the workers send; MLflow 3 refuses others


def test_dockerfile_copies_every_package():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("sweep", "models", "optim", "conf"):
        assert f"COPY {package} ./{package}" in dockerfile
