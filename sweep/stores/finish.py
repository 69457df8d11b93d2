"""Finishing a trial: the one path by which an outcome is recorded, used by the worker, by the
driver for a worker that died past its retries, and by recovery after a driver died.

Optuna is written first (it is the source of truth), then the trial's MLflow run is closed from
what Optuna now holds. A process that dies between the two leaves a RUNNING run for a finished
trial, which the next driver closes the same way (``close``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sweep.core.credentials import redact
from sweep.core.errors import store_calls
from sweep.core.outcome import Status, TrialOutcome
from sweep.stores import tracking
from sweep.stores.studies import SweepStudy, outcome_of

OPTUNA, MLFLOW = "Optuna storage", "MLflow tracking store"
# How the run gets closed; by default at once, an error stopping the sweep. A worker closes it
# through its MLflow sender (retried within tracking_retry_s; past that the driver closes it later).
RunCloser = Callable[[TrialOutcome], None]


def finish_trial(
    study: SweepStudy,
    tracking_uri: str,
    run_id: str,
    number: int,
    status: Status,
    reason: str = "",
    metrics: Mapping[str, float] = (),
    value: float | None = None,
    rewrite_run: bool = False,
    close_run: RunCloser | None = None,
) -> TrialOutcome:
    """Record ``status`` unless the trial already has an outcome (that one stands), then close its run.

    ``rewrite_run``: the run may already be closed with an outcome Optuna no longer holds (a
    worker closed it, then its ``tell`` was lost from a torn journal); it is reopened and closed
    again from Optuna's record, so both stores agree."""
    reason = redact(reason, tracking_uri)  # an error's text may quote a store URL; both stores keep the reason
    with store_calls(OPTUNA):
        outcome = study.finish(number, status, reason, metrics, value)
    if rewrite_run:
        with store_calls(MLFLOW):
            runs = tracking.client(tracking_uri)
            if runs.get_run(run_id).info.status != "RUNNING":
                runs.update_run(run_id, status="RUNNING")  # dying here leaves it to close_finished_runs
    _close(tracking_uri, run_id, outcome, close_run)
    return outcome


def close(tracking_uri: str, run_id: str, outcome: TrialOutcome) -> None:
    """Write a finished trial's outcome to its run (a closed run is left as it is)."""
    with store_calls(MLFLOW):
        tracking.close_run(tracking_uri, run_id, outcome)


def _close(tracking_uri: str, run_id: str, outcome: TrialOutcome, close_run: RunCloser | None) -> None:
    if close_run is None:
        close(tracking_uri, run_id, outcome)
    else:
        close_run(outcome)


def close_from_record(
    study: SweepStudy, tracking_uri: str, run_id: str, number: int, close_run: RunCloser | None = None
) -> TrialOutcome | None:
    """Close the run of a trial Optuna already finished; None (nothing done) if it has not."""
    with store_calls(OPTUNA):
        outcome = outcome_of(study.record(number))
    if outcome is not None:
        _close(tracking_uri, run_id, outcome, close_run)
    return outcome


def optuna_calls() -> store_calls:
    """Around a call to the Optuna storage: its failure stops the sweep as ``StoreUnavailable``."""
    return store_calls(OPTUNA)
