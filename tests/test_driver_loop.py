"""The driver's loop without Ray (its tasks recorded, not run): a trial prepared ahead while every
slot is busy, handed to the next slot that frees with no store call in between; the MLflow run
search a trial the driver just asked skips; a worker's ``queued_seconds``."""

from __future__ import annotations

import itertools
import os
import time
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from sweep.core.config import SWEEP, load_config
from sweep.core.outcome import Tally
from sweep.execution import driver as driver_module
from sweep.execution.driver import Driver, Loop
from sweep.execution.progress import Progress
from sweep.stores.sweepdir import SweepDir


class _Recorded:
    """A remote function that records what it was sent and returns a fresh reference."""

    def __init__(self):
        self.sent: list = []
        self._refs = itertools.count()

    def remote(self, task, data_ref):
        self.sent.append(task)
        return f"ref-{next(self._refs)}"


@pytest.fixture
def loop_driver(tmp_path, digits):
    """A real driver on fresh stores (journal, SQLite MLflow) for one optimizer, repaired as
    ``Driver.run`` does, and its loop with recorded tasks."""
    cfg = load_config(
        "quickstart",
        [f"output_dir={tmp_path}", "name=loop", "optimizers=[adam]", "trials=4", "workers=2", "epochs=1"],
        mode=SWEEP,
    )
    sweep_dir = SweepDir.of(cfg.output_dir, cfg.name)
    with sweep_dir.claim() as sweep_id:
        driver = Driver(cfg, sweep_dir.stores(None, None), sweep_dir, digits, sweep_id)
        for lane in driver.lanes():
            driver.known[lane.study.name] = driver.recovery.recover(lane)
        tallies = {"adam": Tally.of(cfg.trials, [])}
        tasks = SimpleNamespace(solo=_Recorded(), pack=_Recorded(), after_pack=_Recorded(), data_ref=None)
        loop = Loop(tasks, tallies, Progress(tallies, live=False))
        yield driver, loop


def _states(driver) -> list[TrialState]:
    return [t.state for t in driver.studies["adam"].trials()]


@pytest.mark.slow  # opens MLflow's SQLite store
def test_a_trial_prepared_ahead_goes_to_the_next_free_slot_with_no_store_call(loop_driver, monkeypatch):
    driver, loop = loop_driver
    driver.refill(loop)
    assert len(loop.in_flight) == 2 and not loop.ready
    driver.prepare_ahead(loop)
    assert len(loop.ready) == 1 and loop.tallies["adam"].running == 3  # asked: RUNNING, counted as running
    assert _states(driver) == [TrialState.RUNNING] * 3
    prepared = loop.ready[0][1]

    loop.in_flight.pop(next(iter(loop.in_flight)))  # a worker frees
    monkeypatch.setattr(driver, "prepare_trial", lambda lane: pytest.fail("a store call before the freed slot's trial"))
    driver.refill(loop)
    assert len(loop.in_flight) == 2 and not loop.ready
    sent = loop.tasks.solo.sent[-1]
    assert sent.number == prepared.number and sent.run_id == prepared.run_id
    assert 0 < time.time() - sent.sent_at < 60  # stamped when handed over: the worker's queued_seconds
    monkeypatch.undo()

    driver.prepare_ahead(loop)  # the budget's last trial
    driver.prepare_ahead(loop)  # nothing left to ask: 4 trials done or running
    assert len(loop.ready) == 1 and len(_states(driver)) == 4


@pytest.mark.slow  # opens MLflow's SQLite store
def test_without_trials_prepared_ahead_a_slot_gets_its_trial_when_it_frees(loop_driver, monkeypatch):
    driver, loop = loop_driver
    monkeypatch.setattr(driver_module, "PREPARED_AHEAD", 0)
    driver.refill(loop)
    driver.prepare_ahead(loop)
    assert not loop.ready and len(_states(driver)) == 2


@pytest.mark.slow  # opens MLflow's SQLite store
def test_a_trial_just_asked_skips_the_run_search_one_asked_before_does_not(loop_driver, monkeypatch):
    driver, loop = loop_driver
    searched = []
    find = driver.tracker.find_trial_run
    monkeypatch.setattr(driver.tracker, "find_trial_run", lambda *a, **k: searched.append(a) or find(*a, **k))
    lane = driver.lanes()[0]
    driver.prepare_trial(lane)
    assert searched == []  # numbered past what the study held at the start: no run can exist
    driver.known[lane.study.name] = 10  # as if it had been asked before this driver (a retry queued)
    task = driver.prepare_trial(lane)
    assert len(searched) == 1
    run = driver.tracker.client.get_run(task.run_id)
    assert run.data.tags["optuna.trial_number"] == str(task.number) and run.data.params


@pytest.mark.slow  # trains two 1-epoch trials in this process (a worker asks Ray for its node)
def test_a_worker_records_how_long_its_trial_waited_after_the_hand_off(ray_address, loop_driver):
    import dataclasses

    from sweep.execution.worker import execute

    driver, loop = loop_driver
    task = driver.prepare_trial(driver.lanes()[0])
    mlflow_env = lambda: {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}  # noqa: E731
    before = mlflow_env()
    outcome = execute(dataclasses.replace(task, sent_at=time.time() - 5.0), driver.data)
    # The worker's one-try MLflow requests last as long as its task: this process's driver keeps
    # the client's retries (the setting once leaked and failed a later outage test).
    assert mlflow_env() == before
    assert outcome.status.value == "ok" and 5.0 <= outcome.metrics["queued_seconds"] < 60
    assert driver.studies["adam"].record(task.number).user_attrs["final_queued_seconds"] >= 5.0
    unstamped = execute(driver.prepare_trial(driver.lanes()[0]), driver.data)
    assert "queued_seconds" not in unstamped.metrics  # not handed over by a driver that stamps it
