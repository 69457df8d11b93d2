"""Sweeps on a real two-node Ray cluster (tests/cluster.py): the head in this machine's network
namespace, a worker node in its own namespace behind a veth pair, Optuna on PostgreSQL and a real
``mlflow server`` (PostgreSQL backend, proxied artifacts), the driver as a CLI subprocess.

Both nodes run trials, and each trial records the node that ran it in Optuna and MLflow. Losing
the worker host mid-trial (every process in its namespace SIGKILLed, or its link cut) re-runs the
lost trial on the head: totals stay exact, nothing is duplicated and nothing is left RUNNING.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from sweep.core.keys import Attr
from sweep.stores.studies import study_name
from tests import services
from tests.cluster import ROOT, Cluster, wait_for
from tests.sweep_helpers import mlflow_runs, runs_per_trial

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.cluster]

SWEEP_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One head and one worker node for the module (~15 s to start); removed whatever happens."""
    built = Cluster.start(tmp_path_factory.mktemp("cluster"))
    try:
        built.add_worker()
        yield built
    finally:
        built.close()


def start_sweep(
    cluster: Cluster, name: str, database: str, overrides: list[str], log, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``sweep run`` as a driver process on the head host, using this checkout's code."""
    command = [
        sys.executable,
        "-m",
        "sweep.cli",
        "run",
        "quickstart",
        f"name={name}",
        f"ray_address={cluster.gcs_address}",
        f"storage={cluster.storage_url(database)}",
        f"tracking_uri={cluster.mlflow_uri}",
        f"output_dir={cluster.base / 'sweeps'}",
        "batch_size=64",
        "workers=2",
        "num_cpus=1",
        "pruner=none",
        "schedules=[constant]",
        "reeval_seeds=0",
        "report_figures=false",
        *overrides,
    ]
    env = {**cluster.driver_env(), **(env or {})}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(driver: subprocess.Popen, log_path) -> None:
    code = driver.wait(timeout=SWEEP_TIMEOUT_S)
    assert code == 0, f"the driver exited {code}:\n{log_path.read_text()[-3000:]}"


@functools.cache
def storage_of(database: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per database: the tests poll it several times a second."""
    return optuna.storages.RDBStorage(services.pg_url(database))


def load_studies(name: str, database: str, optimizers: list[str]) -> dict[str, optuna.Study]:
    storage = storage_of(database)
    return {opt: optuna.load_study(study_name=study_name(name, opt), storage=storage) for opt in optimizers}


def check_exact(cluster: Cluster, name: str, studies: dict[str, optuna.Study], trials: int):
    """Exact totals: ``trials`` finished trials per study, one MLflow run each (matching its trial's
    run id and node), nothing RUNNING anywhere, every epoch one value in each store."""
    client, parents, children = mlflow_runs(cluster.mlflow_uri, name)
    assert len(parents) == len(studies)
    assert set(runs_per_trial(children).values()) == {1} and len(children) == trials * len(studies)
    runs = {(r.data.tags["sweep.optimizer"], int(r.data.tags["optuna.trial_number"])): r for r in children}
    for opt, study in studies.items():
        assert len(study.trials) == trials
        for t in study.trials:
            assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), (opt, t.number, t.state, t.user_attrs)
            run = runs[(opt, t.number)]
            assert run.info.run_id == t.user_attrs[Attr.MLFLOW_RUN]
            assert run.info.status == "FINISHED"
            assert run.data.tags["sweep.node_id"] == t.user_attrs[Attr.NODE_ID]
            assert run.data.tags["sweep.node_address"] == t.user_attrs[Attr.NODE_ADDRESS]
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
            assert sorted(steps) == sorted(t.intermediate_values) == list(range(1, len(steps) + 1))
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
    return runs


def test_sweep_spreads_over_both_nodes(cluster, tmp_path):
    """With a user's optimizer beside the built-in ones: its module (tests/user_code, on the driver's
    path only; the nodes have this checkout's root) reaches both nodes in the job's runtime_env."""
    database = cluster.create_database("spread")
    log_path = tmp_path / "driver.log"
    user_code = ROOT / "tests" / "user_code"
    overrides = [f"optimizers=[sgd,adam,{user_code / 'sign_momentum.yaml'}]", "trials=2", "epochs=1"]
    with open(log_path, "wb") as log:
        driver = start_sweep(cluster, "spread", database, overrides, log, {"PYTHONPATH": f"{ROOT}:{user_code}"})
        finish(driver, log_path)
    studies = load_studies("spread", database, ["sgd", "adam", "sign_momentum"])
    check_exact(cluster, "spread", studies, trials=2)
    assert all(t.state == TrialState.COMPLETE for t in studies["sign_momentum"].trials)
    per_node = Counter(t.user_attrs[Attr.NODE_ADDRESS] for s in studies.values() for t in s.trials)
    print(f"trials per node: {dict(per_node)}")
    assert set(per_node) == {cluster.head_ip, cluster.host.address}, per_node
    node_ids = {t.user_attrs[Attr.NODE_ID] for s in studies.values() for t in s.trials}
    assert len(node_ids) == 2 and set(cluster.node_states()) == node_ids
    # checkpoints went through the tracking server's artifact proxy, and the finished trials' ones
    # were deleted through it too, but each optimizer's best trial's last one
    client, _, _ = mlflow_runs(cluster.mlflow_uri, "spread")
    for opt, study in studies.items():
        kept = [t for t in study.trials if client.list_artifacts(t.user_attrs[Attr.MLFLOW_RUN], "checkpoints")]
        assert len(kept) == 1 and kept[0].value == max(t.value for t in study.trials), (opt, kept)


def running_on(studies_of, address: str, epochs: int = 1):
    """A RUNNING trial on the node at ``address`` with at least ``epochs`` epochs reported, or None."""
    try:
        studies = studies_of()
    except (KeyError, Exception):  # noqa: BLE001 - the study is not created yet
        return None
    for study in studies.values():
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(Attr.NODE_ADDRESS) == address and len(t.intermediate_values) >= epochs:
                return t
    return None


# "killed" (every process of the host SIGKILLed) passes as well; the suite runs the harder case only
# (the host lives on, unreachable: it needed gRPC keepalive), to keep the suite under 10 minutes
@pytest.mark.parametrize("loss", ["cut"])
def test_worker_host_lost_mid_trial(cluster, tmp_path, loss):
    """Lose the worker host while it trains: every process in its namespace SIGKILLed (``killed``),
    or its only link taken down (``cut``: the host lives on, unreachable). Ray declares the node
    dead within seconds (the cluster's shortened health checks) and re-runs the lost trial on the
    head (a node's death is a system failure, retried up to ``max_retries``); the trial keeps its
    one MLflow run and each epoch one value."""
    cluster.ensure_worker()
    database = cluster.create_database(f"loss_{loss}")
    name = f"loss-{loss}"
    log_path = tmp_path / "driver.log"
    epochs, trials = 5, 2
    with open(log_path, "wb") as log:
        driver = start_sweep(
            cluster,
            name,
            database,
            ["optimizers=[momentum]", f"trials={trials}", f"epochs={epochs}", "batch_size=16", "optimizer.lr=0.01"],
            log,
        )
        try:
            victim = wait_for(
                "a trial with an epoch on the worker host",
                lambda: (
                    running_on(lambda: load_studies(name, database, ["momentum"]), cluster.host.address, epochs=2)
                    or (driver.poll() is not None and "exited")
                ),
                timeout_s=SWEEP_TIMEOUT_S,
                every_s=0.3,
            )
            assert victim != "exited", log_path.read_text()[-3000:]
            worker_id = victim.user_attrs[Attr.NODE_ID]
            lost_at = time.monotonic()
            if loss == "killed":
                cluster.host.kill_all()
            else:
                cluster.host.set_link(False)
            wait_for(
                "Ray to declare the worker node dead",
                lambda: cluster.node_states().get(worker_id) == "DEAD",
                timeout_s=120,
                every_s=0.2,
            )
            detection_s = time.monotonic() - lost_at
            finish(driver, log_path)
        finally:
            if driver.poll() is None:
                driver.kill()
    studies = load_studies(name, database, ["momentum"])
    runs = check_exact(cluster, name, studies, trials=trials)
    lost = studies["momentum"].trials[victim.number]
    assert lost.state == TrialState.COMPLETE and lost.user_attrs[Attr.ATTEMPT] == 2
    assert lost.user_attrs[Attr.NODE_ADDRESS] == cluster.head_ip
    assert sorted(lost.intermediate_values) == list(range(1, epochs + 1))
    assert runs[("momentum", victim.number)].data.tags["sweep.attempts"] == "2"
    # epoch 1's checkpoint was stored (through the tracking server's artifact proxy) before epoch 2
    # was reported: the retry on the head goes on from it, not from epoch 1
    resumed_from = lost.user_attrs[Attr.RESUMED_FROM]
    assert 1 <= resumed_from < epochs
    assert runs[("momentum", victim.number)].data.tags[f"sweep.{Attr.RESUMED_FROM}"] == str(resumed_from)
    duplicated = sum(n - 1 for n in runs_per_trial(mlflow_runs(cluster.mlflow_uri, name)[2]).values())
    print(
        f"worker host {loss}: node declared dead after {detection_s:.1f} s; trial {victim.number} lost at epoch "
        f"{max(victim.intermediate_values)} and re-run on the head from its epoch-{resumed_from} checkpoint; "
        f"duplicated runs: {duplicated}"
    )
