"""The worker's MLflow sender against a real MLflow SQLite store (no server): a resent epoch is
stored once, writes go out in order, a store error that is no outage stops the sweep, and the
reason a trial fails with names the epochs not logged.

The outage itself (a real server killed and restarted) is tests/test_tracking_outage.py.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from sweep.core.errors import StoreUnavailable
from sweep.stores import tracking
from sweep.stores.mlflow_sender import TrackingSender, epoch_ranges, is_outage

METRICS = {"val_accuracy": 0.5, "val_loss": 1.25}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real sqlite tracking store with one experiment; (uri, client, experiment id)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("sender")


@pytest.mark.slow  # writes to a fresh MLflow store
def test_an_epoch_sent_twice_is_stored_once(store):
    """What a resend after a lost response does: the same Metric objects (one timestamp) again."""
    uri, client, experiment = store
    run_id = client.create_run(experiment).info.run_id
    batch = tracking.epoch_metrics(METRICS, step=1)
    tracking.log_metrics(uri, run_id, batch)
    tracking.log_metrics(uri, run_id, batch)
    for key in METRICS:
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, key)] == [(1, METRICS[key])]


@pytest.mark.slow  # writes to a fresh MLflow store
def test_writes_go_out_in_order_and_the_run_is_closed(store):
    from sweep.core.outcome import Status, TrialOutcome

    uri, client, experiment = store
    run_id = client.create_run(experiment).info.run_id
    with TrackingSender(uri, run_id, budget_s=5) as sender:
        sender.tag({"sweep.node_id": "n1"})
        for epoch in (1, 2, 3):
            sender.log_epoch(epoch, METRICS)
        sender.catch_up()
        assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2, 3]
        sender.close_run(TrialOutcome(number=0, status=Status.OK, value=0.5, metrics={"epochs": 3.0}))
        sender.check()
        assert sender.failure == ""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sweep.node_id"] == "n1"
    assert run.data.metrics["final_epochs"] == 3.0


@pytest.mark.slow  # writes to a fresh MLflow store
def test_a_store_error_is_not_an_outage_and_stops_the_sweep(store):
    """A local store's error (here: a run it does not have) is raised at once, not retried."""
    uri, _, _ = store
    with TrackingSender(uri, "0" * 32, budget_s=300) as sender:
        sender.log_epoch(1, METRICS)
        with pytest.raises(StoreUnavailable, match="MLflow tracking store unavailable"):
            sender.flush()
        with pytest.raises(StoreUnavailable):
            sender.check()
        assert sender.failure == ""  # not a trial failure: the sweep stops and the trial runs again


def test_only_a_server_that_does_not_answer_is_an_outage():
    from mlflow.exceptions import MlflowException, RestException

    no_answer = MlflowException("API request to http://h/api failed with exception ... Connection refused")
    assert is_outage(no_answer, "http://127.0.0.1:5000")
    assert not is_outage(no_answer, "sqlite:///mlflow.db")
    assert is_outage(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), "http://h")
    assert not is_outage(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}), "http://h")


def test_epoch_ranges():
    assert epoch_ranges([3, 4, 5, 8]) == "epochs 3-5, 8"
    assert epoch_ranges([2]) == "epoch 2"
    assert epoch_ranges([7, 6]) == "epochs 6-7"
    assert epoch_ranges([4, 4]) == "epoch 4"
