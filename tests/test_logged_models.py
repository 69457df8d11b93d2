"""What a stopped driver leaves of a logged model, made with MLflow's own calls in a real SQLite
store, and what ``logged_models`` reads of it and keeps: one complete model per run and name."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from sweep.stores import logged_models, tracking

pytestmark = pytest.mark.slow  # MLflow's first store setup takes about 2 s


@pytest.fixture
def store(tmp_path):
    """A tracking store with one experiment and a re-evaluation run in it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    experiment = client.create_experiment("s", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, experiment, client.create_run(experiment).info.run_id


def _model(client, experiment, run_id, status, files, tmp_path: Path, name="sgd") -> str:
    """A logged model as a stop can leave it: PENDING (stopped while logging), READY or FAILED,
    with or without its files."""
    model_id = client.create_logged_model(experiment, name=name, source_run_id=run_id).model_id
    if files:
        folder = tmp_path / model_id
        folder.mkdir()
        (folder / logged_models.MANIFEST).write_text("flavors: {}\n")
        client.log_model_artifacts(model_id, str(folder))
    if status != "PENDING":
        client.finalize_logged_model(model_id, status)
    return model_id


def test_settle_keeps_the_complete_model_and_deletes_what_a_stop_left(store, tmp_path):
    uri, client, experiment, run = store
    shapes = [("PENDING", False), ("PENDING", True), ("FAILED", True), ("READY", False), ("READY", True)]
    made = [_model(client, experiment, run, status, files, tmp_path) for status, files in shapes]
    others = [
        _model(client, experiment, run, "PENDING", False, tmp_path, name="mine"),  # not the sweep's name
        _model(client, experiment, client.create_run(experiment).info.run_id, "PENDING", False, tmp_path),
    ]

    found = logged_models.records(uri, experiment, run, "sgd")
    assert [(r.model_id, r.status, r.files) for r in found] == [(m, *s) for m, s in zip(made, shapes)]
    assert [r.complete for r in found] == [False, False, False, False, True]
    assert {r.source_run_id for r in found} == {run} and {r.experiment_id for r in found} == {experiment}

    assert logged_models.settle(uri, experiment, run, "sgd", tagged=None) == f"models:/{made[-1]}"
    assert [r.model_id for r in logged_models.records(uri, experiment)] == [made[-1], *others]


def test_settle_deletes_a_pending_leftover_and_keeps_the_tagged_one_of_two(store, tmp_path):
    uri, client, experiment, run = store
    _model(client, experiment, run, "PENDING", False, tmp_path)
    assert logged_models.settle(uri, experiment, run, "sgd", tagged=None) is None
    assert logged_models.records(uri, experiment) == []

    older, newer = (_model(client, experiment, run, "READY", True, tmp_path) for _ in range(2))
    assert logged_models.settle(uri, experiment, run, "sgd", tagged=f"models:/{newer}") == f"models:/{newer}"
    assert [r.model_id for r in logged_models.records(uri, experiment)] == [newer]
    with pytest.raises(MlflowException, match="not found"):
        client.get_logged_model(older)
