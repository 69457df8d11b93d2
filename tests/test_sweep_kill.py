"""SIGKILL the driver mid-sweep, run the same command again: exact totals, nothing duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweep.core.config import load_config
from sweep.stores.studies import counts_against_budget, open_storage, study_name
from tests.sweep_helpers import (
    default_storage,
    default_tracking_uri,
    mlflow_runs,
    runs_per_trial,
    studies,
    sweep_dir_of,
)

pytestmark = pytest.mark.slow  # sweeps on the session's Ray, one of them in a driver subprocess

REPO = Path(__file__).resolve().parent.parent


def _trial_states(storage_url, name, optimizers):
    states = []
    for opt in optimizers:
        try:
            study = optuna.load_study(study_name=study_name(name, opt), storage=open_storage(storage_url))
        except KeyError:
            continue
        states += [t.state for t in study.get_trials(deepcopy=False)]
    return states


def _sigkill_driver_when(command, tmp_path, storage_url, seen, what: str, poll_s: float = 0.5) -> None:
    """Start the driver ``command``, SIGKILL it once ``seen()`` is true of its journal."""
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            time.sleep(poll_s)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()
            if not Path(storage_url[len("journal://") :]).exists():
                continue
            open_storage.cache_clear()
            if seen():
                return
        raise AssertionError(f"never saw {what}")
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        open_storage.cache_clear()


def test_sigkill_driver_then_rerun(ray_address, tmp_path):
    overrides = [
        f"output_dir={tmp_path / 'sweeps'}",
        "name=killed",
        "optimizers=[sgd,momentum]",
        "trials=3",
        "reeval_seeds=0",
        "report_figures=false",
        "epochs=3",
        "batch_size=32",
        "workers=2",
        "pruner=none",
        f"ray_address={ray_address}",
    ]
    command = [sys.executable, "-m", "sweep.cli", "run", "quickstart", *overrides]
    cfg = load_config("quickstart", overrides, mode="sweep")
    storage_url = default_storage(sweep_dir_of(cfg))

    def finished_and_running():
        states = _trial_states(storage_url, cfg.name, cfg.optimizers)
        return TrialState.COMPLETE in states and TrialState.RUNNING in states

    _sigkill_driver_when(command, tmp_path, storage_url, finished_and_running, "a finished and a running trial at once")
    open_storage.cache_clear()
    assert TrialState.RUNNING in _trial_states(storage_url, cfg.name, cfg.optimizers)

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "was interrupted" in rerun.stdout

    open_storage.cache_clear()
    by_opt = studies(cfg, storage_url)
    all_trials = [(opt, t) for opt, s in by_opt.items() for t in s.get_trials()]
    for opt, study in by_opt.items():
        assert sum(counts_against_budget(t) for t in study.trials) == 3, opt
    assert not [t for _, t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    interrupted = [(opt, t) for opt, t in all_trials if t.state == TrialState.FAIL]
    assert interrupted and all(t.user_attrs["status"] == "interrupted" for _, t in interrupted)
    retries = {(opt, t.user_attrs["retry_of"]): t for opt, t in all_trials if "retry_of" in t.user_attrs}
    for opt, t in interrupted:
        assert retries[(opt, t.number)].params == t.params

    _, parents, children = mlflow_runs(cfg_tracking(cfg), cfg.name)
    assert len(parents) == 2
    counts = runs_per_trial(children)
    assert len(children) == len(all_trials) and set(counts.values()) == {1}
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
    by_key = {(r.data.tags["sweep.optimizer"], int(r.data.tags["optuna.trial_number"])): r for r in children}
    for opt, t in interrupted:
        run = by_key[(opt, t.number)]
        assert run.info.status == "KILLED" and run.data.tags["sweep.status"] == "interrupted"
        retry = retries[(opt, t.number)]
        assert by_key[(opt, retry.number)].data.tags["sweep.retry_of"] == str(t.number)


def cfg_tracking(cfg):
    return default_tracking_uri(sweep_dir_of(cfg))


def test_rerun_repairs_a_driver_that_died_between_two_writes(ray_address, sweep_overrides):
    """The driver died after failing a trial in Optuna but before closing its run and queueing its
    retry: the next run closes the run from the study's record and queues the retry once."""
    from sweep.execution.launch import run_sweep
    from sweep.execution.search import sample_trial
    from sweep.stores.tracking import SweepTracker

    base = sweep_overrides + ["name=halfway", "optimizers=[adam]", "epochs=1", "pruner=none", "workers=1"]
    cfg = load_config("quickstart", base + ["trials=1"], mode="sweep")
    assert run_sweep(cfg).rows
    sweep_dir = sweep_dir_of(cfg)
    study = studies(cfg, default_storage(sweep_dir))["adam"]
    tracker = SweepTracker(default_tracking_uri(sweep_dir), cfg.name, None, (sweep_dir / "id").read_text().strip())
    trial = study.ask()
    sample_trial(trial, "adam", cfg)
    run_id = tracker.trial_run(study.user_attrs["mlflow_run_id"], "adam", trial.number, trial.params)
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("status", "interrupted")
    study.tell(trial, state=TrialState.FAIL)  # ...and the driver died here

    assert run_sweep(load_config("quickstart", base + ["trials=2"], mode="sweep")).rows
    study = studies(cfg, default_storage(sweep_dir))["adam"]
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == trial.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == study.trials[trial.number].params
    assert sum(counts_against_budget(t) for t in study.trials) == 2 and len(study.trials) == 3
    client, _, children = mlflow_runs(default_tracking_uri(sweep_dir), cfg.name)
    assert len(children) == 3 and set(runs_per_trial(children).values()) == {1}
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "FAIL"
    assert run.data.tags["sweep.status"] == "interrupted"
    assert not [r for r in children if r.info.status == "RUNNING"]


def test_sigkill_driver_during_reevaluation_then_rerun(ray_address, tmp_path):
    """Killed while re-evaluating: the rerun records the interrupted re-evaluations, queues each
    missing (configuration, seed) once, and ends with every seed exactly once and a model."""
    import json

    from sweep.stores import reeval
    from sweep.stores.studies import SweepStudy

    overrides = [
        f"output_dir={tmp_path / 'sweeps'}",
        "name=killed-reeval",
        "optimizers=[sgd]",
        "trials=2",
        "epochs=4",
        "batch_size=32",
        "workers=2",
        "pruner=none",
        "schedules=[constant]",
        "reeval_seeds=3",
        f"ray_address={ray_address}",
    ]
    command = [sys.executable, "-m", "sweep.cli", "run", "quickstart", *overrides]
    cfg = load_config("quickstart", overrides, mode="sweep")
    storage_url = default_storage(sweep_dir_of(cfg))
    name = study_name(cfg.name, "sgd", reeval=True)

    def reevaluating():
        study = SweepStudy.find(storage_url, name)
        return study is not None and any(t.state == TrialState.RUNNING for t in study.trials())

    _sigkill_driver_when(command, tmp_path, storage_url, reevaluating, "a re-evaluation running", poll_s=0.3)

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "reeval" in rerun.stdout and "was interrupted" in rerun.stdout
    open_storage.cache_clear()
    trials = SweepStudy.find(storage_url, name).trials()
    counted = [reeval.key_of(t) for t in trials if counts_against_budget(t)]
    assert sorted(seed for _, seed in counted) == [1, 2, 3] and len({src for src, _ in counted}) == 1
    interrupted = [t for t in trials if t.user_attrs.get("status") == "interrupted"]
    assert interrupted and all(any(r.user_attrs.get("retry_of") == t.number for r in trials) for t in interrupted)
    assert len(SweepStudy.find(storage_url, study_name(cfg.name, "sgd")).trials()) == 2  # the search is not rerun

    client = MlflowClient(cfg_tracking(cfg))
    runs = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id], max_results=100)
    reevals = [r for r in runs if r.data.tags.get("sweep.role") == "reeval"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in reevals) == [t.number for t in trials]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    summary = json.loads((sweep_dir_of(cfg) / "summary.json").read_text())["optimizers"]["sgd"]
    assert summary["seeds"] == 3 and summary["model_uri"].startswith("models:/")
