"""Read a finished sweep back from its real Optuna storage and MLflow store, for assertions."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
from mlflow import MlflowClient

from sweep.studies import open_storage, study_name
from sweep.sweepdir import SweepDir


def sweep_dir_of(cfg) -> Path:
    return SweepDir.of(cfg.output_dir, cfg.name).path


def default_storage(sweep_dir: Path) -> str:
    return SweepDir(sweep_dir).stores(None, None).storage


def default_tracking_uri(sweep_dir: Path) -> str:
    return SweepDir(sweep_dir).stores(None, None).tracking_uri


def studies(cfg, storage_url):
    storage = open_storage(storage_url)
    return {opt: optuna.load_study(study_name=study_name(cfg.name, opt), storage=storage)
            for opt in cfg.optimizers}


def mlflow_runs(tracking_uri, experiment):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    return client, parents, children


def runs_per_trial(children):
    return Counter((r.data.tags["sweep.optimizer"], int(r.data.tags["optuna.trial_number"])) for r in children)
