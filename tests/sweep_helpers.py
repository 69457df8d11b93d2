"""Read a finished sweep back from its real Optuna storage and MLflow store, for assertions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
from mlflow import MlflowClient

from sweep.stores.studies import open_storage, study_name
from sweep.stores.sweepdir import SweepDir


def sweep_dir_of(cfg) -> Path:
    return SweepDir.of(cfg.output_dir, cfg.name).path


def tiny_sweep(name: str, *extra: str) -> list[str]:
    """Overrides of the quickstart config for a tiny real sweep: sgd alone, 2 trials of 1 epoch,
    one worker, no pruning, no re-evaluation, no figures; ``extra`` overrides any of them."""
    return [
        f"name={name}",
        "optimizers=[sgd]",
        "trials=2",
        "epochs=1",
        "batch_size=64",
        "workers=1",
        "pruner=none",
        "schedules=[constant]",
        "reeval_seeds=0",
        "report_figures=false",
        *extra,
    ]


def default_storage(sweep_dir: Path) -> str:
    return SweepDir(sweep_dir).stores(None, None).storage


def default_tracking_uri(sweep_dir: Path) -> str:
    return SweepDir(sweep_dir).stores(None, None).tracking_uri


def studies(cfg, storage_url):
    storage = open_storage(storage_url)
    return {opt: optuna.load_study(study_name=study_name(cfg.name, opt), storage=storage) for opt in cfg.optimizers}


def mlflow_runs(tracking_uri, experiment):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    return client, parents, children


def runs_per_trial(children):
    return Counter((r.data.tags["sweep.optimizer"], int(r.data.tags["optuna.trial_number"])) for r in children)


def sweep_with_a_killed_worker(cfg, find_victim, what: str):
    """Run ``cfg``'s sweep in a thread, SIGKILL the Ray worker process of the first trial
    ``find_victim()`` returns (its ``worker`` attribute is ``host:pid``), and wait for the sweep to
    end. Returns the victim as it was seen, and the driver's exit code (0: finished with rows)."""
    import os
    import signal
    import threading
    import time

    from sweep.execution.launch import run_sweep

    outcome: dict[str, int] = {}
    driver = threading.Thread(target=lambda: outcome.setdefault("code", 0 if run_sweep(cfg).rows else 1))
    driver.start()
    victim, deadline = None, time.time() + 120
    while victim is None and driver.is_alive() and time.time() < deadline:
        time.sleep(0.05)
        victim = find_victim()
    assert victim is not None, f"never saw {what}"
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    driver.join(timeout=240)
    return victim, outcome.get("code")


def text_cells(path) -> list[str]:
    """Every text value in every table of a SQLite file (to look for a path or a secret in it)."""
    import sqlite3

    with sqlite3.connect(path) as db:
        tables = [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")]
        return [
            cell
            for table in tables
            for row in db.execute(f'select * from "{table}"')
            for cell in row
            if isinstance(cell, str)
        ]


ON_PURPOSE = "sweeps-damaged-on-purpose"  # a test's folder whose sweeps are left damaged on purpose


def mark_damaged_on_purpose(folder: Path) -> None:
    """The sweeps under ``folder`` stay damaged after their test: the suite's closing check
    (``unhealthy_sweeps``) passes them by."""
    (Path(folder) / ON_PURPOSE).touch()


def unhealthy_sweeps(root: Path) -> list[str]:
    """`sweep check` on every finished sweep under ``root`` whose stores are local files (a server
    or PostgreSQL a test started may be gone by now), but those marked damaged on purpose; the
    report lines of each one that is not healthy."""
    from sweep.core.config import saved_values
    from sweep.execution.check import check

    found = []
    for config in sorted(Path(root).rglob("sweep.yaml")):
        sweep_dir = SweepDir(config.parent)
        if sweep_dir.state() != "finished" or any((p / ON_PURPOSE).exists() for p in config.parents):
            continue
        try:
            saved = saved_values(sweep_dir.saved_config() or {})
        except Exception:  # noqa: BLE001 - a config that does not read is the check's to say
            saved = {}
        urls = [saved.get("storage"), saved.get("tracking_uri")]
        if any(url and not url.startswith(("journal:///", "sqlite:///")) for url in urls):
            continue
        open_storage.cache_clear()
        checked = check(sweep_dir)
        if not checked.healthy:
            found += [f"{sweep_dir.path}:", *checked.lines()]
    return found
