"""k8s/rayjob.yaml (no Kubernetes here): parsed and checked against the code that will run in it."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from sweep import submit
from sweep.core.config import SWEEP, load_config

ROOT = Path(__file__).resolve().parent.parent
JOB = yaml.safe_load((ROOT / "k8s" / "rayjob.yaml").read_text())
CLUSTER = JOB["spec"]["rayClusterSpec"]


def containers():
    head = CLUSTER["headGroupSpec"]["template"]["spec"]["containers"]
    workers = [c for group in CLUSTER["workerGroupSpecs"] for c in group["template"]["spec"]["containers"]]
    return head, workers


def test_entrypoint_is_a_valid_sweep_on_the_cluster():
    argv = shlex.split(JOB["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "sweep.cli", "run"]
    cfg = load_config(argv[4], argv[5:], mode=SWEEP)  # as the driver on the head will load it
    submit.check_submittable(cfg, {})  # no password in it, an output_dir that stays
    assert cfg.ray_address == "auto" and cfg.num_gpus > 0
    assert cfg.storage.startswith("postgresql://") and cfg.tracking_uri.startswith("http://")
    head, _ = containers()
    mounts = [m["mountPath"] for c in head for m in c.get("volumeMounts", [])]
    assert cfg.output_dir in mounts  # the sweep directory outlives the cluster: the same RayJob resumes
    volumes = CLUSTER["headGroupSpec"]["template"]["spec"]["volumes"]
    assert any("persistentVolumeClaim" in v for v in volumes)


def test_kinds_and_gpu_workers():
    assert JOB["apiVersion"] == "ray.io/v1" and JOB["kind"] == "RayJob"
    assert CLUSTER["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head drives, workers train
    _, workers = containers()
    assert workers
    for worker in workers:
        assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert worker["image"].endswith(":cuda")


def test_credentials_come_from_a_secret():
    head, workers = containers()
    for container in [*head, *workers]:
        env = {e["name"]: e for e in container["env"]}
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "PGPASSWORD"
        assert all("value" not in e for e in env.values()), container["name"]  # no literals at all
    text = (ROOT / "k8s" / "rayjob.yaml").read_text()
    assert "kind: Secret" not in text  # the Secret is created by hand, never committed
