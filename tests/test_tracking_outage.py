"""A real MLflow tracking server killed mid-sweep: trials keep training, and what they logged while
it was down arrives once it is back, once (sweep/stores/mlflow_sender.py); a server away longer than
``tracking_retry_s`` fails the trial with the epochs it could not log, never a silent gap.

Real ``mlflow server`` processes (sqlite backend, one uvicorn worker; one per module) killed with SIGKILL to their
process group and started again on the same port and database; real Ray (the session's), a real
Optuna journal; sweeps run in-process on a thread while the test kills and restarts the server.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweep.core.config import load_config
from sweep.core.records import EpochMetrics
from sweep.execution.launch import run_sweep
from sweep.stores.studies import open_storage, study_name
from sweep.stores.sweepdir import SweepDir
from sweep.ui import Server, base_url, server_command, server_env
from tests.sweep_helpers import default_storage, mlflow_runs, runs_per_trial
from tests.test_ui import free_port

pytestmark = pytest.mark.slow

EPOCH_KEYS = [f.name for f in fields(EpochMetrics) if f.name != "epoch"]
OUTAGE_S = 20.0  # from the kill until the restarted server answers /health (it takes ~5 s to start)
SWEEP_TIMEOUT_S = 300


@dataclass
class TrackingServer:
    """An ``mlflow server`` on a fixed port and sqlite file, which the test kills and restarts."""

    backend: str
    port: int
    server: Server | None = None

    @property
    def uri(self) -> str:
        return base_url("127.0.0.1", self.port)

    def start(self) -> None:
        self.server = Server.launch(server_command(self.backend, "127.0.0.1", self.port), env=server_env())
        self.server.wait_healthy(f"{self.uri}/health", 180, threading.Event())

    def kill(self) -> None:
        """SIGKILL to the whole group (mlflow server and its uvicorn worker): no goodbye to clients."""
        pid = self.server.process.pid
        os.killpg(pid, signal.SIGKILL)
        self.server.process.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError("the server's process group outlived SIGKILL")

    def stop(self) -> None:
        if self.server is not None and self.server.process.poll() is None:
            self.server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the module (a start costs 5-15 s); each test uses its own experiment."""
    server = TrackingServer(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow-server.db'}", free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tracking_server(shared_server):
    """The shared server, running (a test that failed mid-outage may have left it down)."""
    if shared_server.server is None or shared_server.server.process.poll() is not None:
        shared_server.start()
    return shared_server


def _config(tmp_path: Path, server: TrackingServer, name: str, *extra: str):
    return load_config(
        "quickstart",
        [
            f"output_dir={tmp_path / 'sweeps'}",
            f"name={name}",
            "optimizers=[sgd]",
            "schedules=[constant]",
            "reeval_seeds=0",
            "report_figures=false",
            "pruner=none",
            "optimizer.lr=0.05",
            "batch_size=8",
            f"tracking_uri={server.uri}",
            *extra,
        ],
        mode="sweep",
    )


def _trials(cfg) -> list[optuna.trial.FrozenTrial]:
    """The study as the journal holds it now (read afresh while the sweep writes it)."""
    storage_url = default_storage(SweepDir.of(cfg.output_dir, cfg.name).path)
    if not Path(storage_url[len("journal://") :]).exists():
        return []
    open_storage.cache_clear()
    try:
        study = optuna.load_study(study_name=study_name(cfg.name, "sgd"), storage=open_storage(storage_url))
    except KeyError:
        return []
    return study.get_trials()


def _wait_until(condition, sweep, what: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sweep.done():
            sweep.result()  # raises the sweep's error
            raise AssertionError(f"the sweep ended before {what}")
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _histories(client: MlflowClient, run_id: str) -> dict[str, list]:
    return {key: client.get_metric_history(run_id, key) for key in EPOCH_KEYS}


def test_server_killed_mid_sweep_and_restarted_loses_and_duplicates_nothing(
    ray_address, tmp_path, capfd, tracking_server
):
    epochs, trials = 8, 3
    cfg = _config(tmp_path, tracking_server, "outage", f"epochs={epochs}", f"trials={trials}", "workers=2")
    with ThreadPoolExecutor(1) as pool:
        sweep = pool.submit(run_sweep, cfg)
        _wait_until(lambda: any(len(t.intermediate_values) >= 2 for t in _trials(cfg)), sweep, "epoch 2")
        killed = time.time()
        tracking_server.kill()
        time.sleep(max(0.0, OUTAGE_S - 5.0 - (time.time() - killed)))  # the restart itself takes ~5 s
        tracking_server.start()
        back = time.time()
        result = sweep.result(timeout=SWEEP_TIMEOUT_S)
    assert result.rows

    finished = _trials(cfg)
    assert len(finished) == trials
    assert [(t.state, t.user_attrs["status"]) for t in finished] == [(TrialState.COMPLETE, "ok")] * trials, [
        (t.number, t.state, t.user_attrs) for t in finished
    ]
    client, parents, children = mlflow_runs(tracking_server.uri, cfg.name)
    assert set(runs_per_trial(children).values()) == {1} and len(children) == trials
    assert not [r for r in parents + children if r.info.status != "FINISHED"]

    duplicates = lost = during_outage = 0
    for run in children:
        for key, history in _histories(client, run.info.run_id).items():
            steps = [m.step for m in history]
            duplicates += len(steps) - len(set(steps))
            lost += len(set(range(1, epochs + 1)) - set(steps))
            assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, key, steps)
            if key == "val_accuracy":  # stamped when the worker logged the epoch, sent when it could be
                during_outage += sum(killed * 1000 <= m.timestamp <= back * 1000 for m in history)
        assert run.data.tags["sweep.status"] == "ok" and float(run.data.metrics["final_epochs"]) == epochs
    assert duplicates == 0 and lost == 0
    assert during_outage > 0
    assert f"waiting for the MLflow tracking server at {tracking_server.uri}" in capfd.readouterr().err
    print(
        f"outage {back - killed:.1f} s; {during_outage} epochs logged while the server was down arrived "
        f"afterwards; duplicates {duplicates}; lost {lost}"
    )


def _epochs_named(reason: str) -> set[int]:
    """ "...; epochs 3-5, 8 not logged (...)" -> {3, 4, 5, 8}; other writes may follow the epochs
    ("epochs 2-14, tags not logged": the trial's tag that its checkpoints, sent through the same
    server, could not be stored)."""
    found = re.search(r"; epochs? (\d+(?:-\d+)?(?:, \d+(?:-\d+)?)*)(?:, [a-z ]+)* not logged", reason)
    assert found, reason
    named = set()
    for part in found.group(1).split(","):
        low, _, high = part.strip().partition("-")
        named.update(range(int(low), int(high or low) + 1))
    return named


def test_server_gone_past_the_budget_fails_the_trial_with_the_epochs_not_logged(ray_address, tmp_path, tracking_server):
    cfg = _config(tmp_path, tracking_server, "gone", "epochs=20", "trials=1", "workers=1", "tracking_retry_s=3")
    with ThreadPoolExecutor(1) as pool:
        sweep = pool.submit(run_sweep, cfg)
        _wait_until(lambda: any(t.intermediate_values for t in _trials(cfg)), sweep, "epoch 1")
        killed = time.monotonic()
        tracking_server.kill()
        failed = _wait_until(
            lambda: [t for t in _trials(cfg) if t.state == TrialState.FAIL], sweep, "the trial to fail"
        )[0]
        gave_up_after = time.monotonic() - killed
        tracking_server.start()  # the driver, retrying meanwhile, closes the run from Optuna's record
        sweep.result(timeout=SWEEP_TIMEOUT_S)

    reason = failed.user_attrs["reason"]
    assert failed.user_attrs["status"] == "failed"
    assert reason.startswith("MLflow tracking server unreachable for 3 s; epoch"), reason
    assert reason.endswith("not logged (last error: [Errno 111] Connection refused)"), reason
    assert gave_up_after < 20, gave_up_after  # 3 s of retries, not MLflow's minutes, then the trial stops
    client, _, children = mlflow_runs(tracking_server.uri, cfg.name)
    (run,) = children
    assert run.info.status == "FAILED"
    assert run.data.tags["sweep.status"] == "failed" and run.data.tags["sweep.reason"] == reason
    ran = int(failed.user_attrs["final_epochs"])
    assert float(run.data.metrics["final_epochs"]) == ran < 20  # stopped early, final metrics written
    logged = {m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
    named = _epochs_named(reason)
    assert not logged & named and logged | named == set(range(1, ran + 1)), (logged, named, ran)  # no silent gap
    print(f"gave up {gave_up_after:.1f} s after the kill: {reason}")
