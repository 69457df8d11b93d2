"""The Optuna adapter (sweep/stores/studies.py) on the installed Optuna, with a real journal storage:
every study and trial operation the engine uses, and the mapping of every status to Optuna."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep.core.outcome import RECORDS, Status
from sweep.stores.studies import SweepStudy, counts_against_budget, foreign_studies, open_storage, outcome_of

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def storage_url(tmp_path):
    open_storage.cache_clear()
    return f"journal:///{tmp_path / 'optuna.journal'}"


def _open(url, sweep_id="id-1", trials=4):
    return SweepStudy.open(
        url, "s", "adam", sweep_id, sampler="random", pruner="median", seed=0, trials=trials, epochs=3
    )


def test_open_is_idempotent_and_keeps_the_first_budget(storage_url):
    first = _open(storage_url)
    again = _open(storage_url, trials=10)
    assert first.name == again.name == "s/adam"
    assert again.study.user_attrs == {"sweep_id": "id-1", "sampler_budget": 4}
    assert foreign_studies(storage_url, "s", "id-1") == [] and foreign_studies(storage_url, "s", "id-2") == ["s/adam"]


@pytest.mark.parametrize("status", list(Status))
def test_every_status_round_trips_through_optuna(storage_url, status):
    study = _open(storage_url)
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1.0, log=True)
    outcome = study.finish(
        trial.number, status, reason=f"because {status.value}", metrics={"val_accuracy": 0.5, "epochs": 2.0}, value=0.5
    )
    record = study.record(trial.number)
    assert record.state == TrialState[RECORDS[status].optuna_state]
    assert outcome == outcome_of(record)
    assert outcome.status == status and outcome.reason == f"because {status.value}"
    assert outcome.metrics == {"val_accuracy": 0.5, "epochs": 2.0}
    assert outcome.value == (0.5 if RECORDS[status].optuna_state == "COMPLETE" else None)
    assert counts_against_budget(record) == RECORDS[status].uses_budget
    # finishing again changes nothing: the first record stands (tell(skip_if_finished=True))
    assert study.finish(trial.number, Status.OK, value=0.9) == outcome


def test_a_worker_rebuilds_the_live_trial_and_reports(storage_url):
    driver = _open(storage_url)
    trial = driver.ask()
    worker = SweepStudy.load(storage_url, driver.name, "median", 3)
    live = worker.live_trial(trial.number)
    live.report(0.4, 1)
    live.set_user_attr("attempt", 1)
    assert live.should_prune() is False
    record = driver.record(trial.number)
    assert record.intermediate_values == {1: 0.4} and record.user_attrs["attempt"] == 1
    assert record.state == TrialState.RUNNING and outcome_of(record) is None


def test_an_interrupted_trial_is_queued_again_with_its_parameters(storage_url):
    study = _open(storage_url)
    trial = study.ask()
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    study.finish(trial.number, Status.INTERRUPTED, "interrupted")
    study.enqueue_retry(study.record(trial.number))
    assert study.waiting() == 1
    retry = study.ask()
    assert retry.suggest_float("lr", 1e-3, 1.0, log=True) == lr and retry.user_attrs["retry_of"] == trial.number


def test_legacy_records_are_classified_by_state():
    """Trials written before the status attribute existed (fail_reason=interrupted)."""
    study = optuna.create_study()
    old = study.ask()
    study.tell(old, state=TrialState.FAIL)
    frozen = study.trials[0]
    frozen.user_attrs["fail_reason"] = "interrupted"
    assert outcome_of(frozen).status == Status.INTERRUPTED


def test_optuna_private_api_is_used_only_in_the_adapter():
    private = re.compile(r"\._storage\b|\._trial_id\b|\._study_id\b")
    users = sorted(str(p.relative_to(REPO)) for p in (REPO / "sweep").rglob("*.py") if private.search(p.read_text()))
    assert users == ["sweep/stores/studies.py"]
