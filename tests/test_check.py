"""``sweep check NAME [--repair]`` on a real sweep (Ray, Optuna journal, MLflow SQLite store), damaged
for real one way at a time: each damage is named in one line with a nonzero exit; ``--repair``
fixes what it can without losing anything, and a repaired sweep resumes to exact counts.

One sweep is built per module and copied for each test (the copy is also a moved sweep: MLflow
recorded the first one's paths).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweep.cli import main
from sweep.core.config import load_config
from sweep.execution.launch import run_sweep
from sweep.stores.studies import counts_against_budget, open_storage
from sweep.stores.sweepdir import saved_sweep
from tests.sweep_helpers import (
    default_storage,
    default_tracking_uri,
    mark_damaged_on_purpose,
    mlflow_runs,
    tiny_sweep,
    unhealthy_sweeps,
)

NAME = "checked"
SET_TRIAL_STATE_VALUES, CREATE_TRIAL = 6, 4  # optuna.storages.journal._storage.JournalOperation


@pytest.fixture(scope="module")
def built(ray_address, tmp_path_factory) -> Path:
    """A finished sweep: 2 search trials and 1 re-evaluation, whose model is logged."""
    out = tmp_path_factory.mktemp("check-built") / "sweeps"
    overrides = [f"output_dir={out}", *tiny_sweep(NAME, "reeval_seeds=1", "reeval_top=1", f"ray_address={ray_address}")]
    assert run_sweep(load_config("quickstart", overrides, mode="sweep")).rows
    return out / NAME


def _copy(built: Path, tmp_path: Path) -> Path:
    target = tmp_path / "sweeps" / NAME
    shutil.copytree(built, target)
    open_storage.cache_clear()
    return target


def _check(sweep_dir: Path, capsys, *flags: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["check", NAME, "--output-dir", str(sweep_dir.parent), *flags])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).splitlines()


def _files(sweep_dir: Path) -> dict[str, int]:
    """The sweep directory's files and sizes, but SQLite's own companions (any reader opens them)."""
    return {p.name: p.stat().st_size for p in sweep_dir.iterdir() if not p.name.endswith(("-wal", "-shm", "lock"))}


def _trial_run(sweep_dir: Path, number: int):
    _, _, children = mlflow_runs(default_tracking_uri(sweep_dir), NAME)
    return next(r for r in children if r.data.tags["optuna.trial_number"] == str(number))


# ---- the damages ---------------------------------------------------------------------------------


def truncate_mlflow_db(sweep_dir: Path) -> str:
    for extra in ("mlflow.db-wal", "mlflow.db-shm"):
        (sweep_dir / extra).unlink(missing_ok=True)
    os.truncate(sweep_dir / "mlflow.db", 3000)
    return r"/mlflow\.db: "


def delete_mlflow_db(sweep_dir: Path) -> str:
    for extra in ("mlflow.db", "mlflow.db-wal", "mlflow.db-shm"):
        (sweep_dir / extra).unlink()
    return r"/mlflow\.db: .*missing"


def delete_journal(sweep_dir: Path) -> str:
    (sweep_dir / "optuna.journal").unlink()
    return r"/optuna\.journal: is missing although MLflow holds 3 trial runs"


def damage_config(sweep_dir: Path) -> str:
    (sweep_dir / "sweep.yaml").write_text("optimizers: [sgd\n")
    return r"/sweep\.yaml: "


def delete_id(sweep_dir: Path) -> str:
    (sweep_dir / "id").unlink()
    return r"/id: is missing"


def damage_journal_middle(sweep_dir: Path, at: str = "first tell") -> str:
    """Spoil a record in the middle of the journal (others follow it): the first trial's final
    tell, or the creation of the second trial. Returns a pattern naming its byte offset."""
    journal = sweep_dir / "optuna.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    if at == "first tell":
        index = next(i for i, r in enumerate(records) if r["op_code"] == SET_TRIAL_STATE_VALUES and r.get("state") == 1)
    else:
        index = [i for i, r in enumerate(records) if r["op_code"] == CREATE_TRIAL][1]
    assert any(r["op_code"] == CREATE_TRIAL for r in records[index + 1 :])  # in the middle: a trial is created after it
    offset = sum(map(len, lines[:index]))
    lines[index] = b"#" + lines[index][1:]
    journal.write_bytes(b"".join(lines))
    return rf"/optuna\.journal: .*\b{offset}\b"


def leave_run_running(sweep_dir: Path) -> str:
    MlflowClient(default_tracking_uri(sweep_dir)).update_run(_trial_run(sweep_dir, 0).info.run_id, status="RUNNING")
    return r"/mlflow\.db: .*trial 0's run .* RUNNING"


def pending_model(sweep_dir: Path) -> str:
    """A logged model whose files never arrived (the driver stopped while logging it)."""
    client = MlflowClient(default_tracking_uri(sweep_dir))
    run = _trial_run(sweep_dir, 1)
    client.create_logged_model(run.info.experiment_id, name="sgd", source_run_id=run.info.run_id)
    return r"/mlflow\.db: logged model sgd .* PENDING and has no files"


def leave_parent_running(sweep_dir: Path) -> str:
    """A finished sweep's parent run reopened (a driver that died while closing it)."""
    _, parents, _ = mlflow_runs(default_tracking_uri(sweep_dir), NAME)
    MlflowClient(default_tracking_uri(sweep_dir)).update_run(parents[0].info.run_id, status="RUNNING")
    return r"/mlflow\.db: sgd's parent run .* RUNNING though the sweep finished"


def delete_model_checkpoint(sweep_dir: Path) -> str:
    """The checkpoint the logged model was built from (the sweep keeps it) deleted."""
    run = next(r for r in _runs(sweep_dir, "reeval") if r.data.tags.get("sweep.model_uri"))
    shutil.rmtree(sweep_dir / "artifacts" / run.info.run_id / "artifacts" / "checkpoints")
    return rf"/artifacts/{run.info.run_id}/artifacts/checkpoints: the run of models:/m-\w+ .*no checkpoint left"


# damage -> whether --repair makes the sweep healthy again
DAMAGES = {
    truncate_mlflow_db: False,
    delete_mlflow_db: False,
    delete_journal: False,
    damage_config: True,
    delete_id: True,
    damage_journal_middle: True,
    leave_run_running: True,
    pending_model: True,
    leave_parent_running: True,
    delete_model_checkpoint: False,
}


@pytest.mark.slow  # builds or copies a real sweep
def test_healthy_sweep(built, tmp_path, capsys):
    sweep_dir = _copy(built, tmp_path)
    code, lines = _check(sweep_dir, capsys)
    assert code == 0, lines
    assert lines == [f"{NAME}: healthy: 3 Optuna trials and 3 MLflow runs agree, 1 logged model"]


@pytest.mark.slow  # builds or copies a real sweep
@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_each_damage_is_named_and_repaired_if_it_can_be(built, tmp_path, capsys, damage):
    sweep_dir = _copy(built, tmp_path)
    mark_damaged_on_purpose(tmp_path)
    pattern = damage(sweep_dir)
    before = _files(sweep_dir)
    code, lines = _check(sweep_dir, capsys)
    assert code == 1, lines
    named = [line for line in lines if line.startswith(str(sweep_dir)) and re.search(pattern, line)]
    assert named, (pattern, lines)
    assert _files(sweep_dir) == before  # the check wrote nothing

    code, lines = _check(sweep_dir, capsys, "--repair")
    repaired = [line for line in lines if line.startswith(f"{NAME}: repair: ")]
    assert repaired, lines
    assert (code == 0) == DAMAGES[damage], lines
    if DAMAGES[damage]:
        assert lines[-1].startswith(f"{NAME}: healthy: "), lines
    if DAMAGES[damage] and damage is not delete_id:  # a missing id is written anew: nothing to copy
        copies = [p for p in sweep_dir.iterdir() if ".before-repair-" in p.name or ".torn-" in p.name]
        assert copies, sorted(p.name for p in sweep_dir.iterdir())  # a copy of whatever it changed


@pytest.mark.slow  # builds or copies a real sweep
def test_the_suites_closing_check_names_a_damaged_sweep(built, tmp_path):
    """``unhealthy_sweeps`` (conftest's closing check) passes a healthy sweep and names a damaged one."""
    sweep_dir = _copy(built, tmp_path / "healthy")
    assert unhealthy_sweeps(tmp_path) == []
    leave_run_running(sweep_dir)
    found = unhealthy_sweeps(tmp_path)
    assert found[0] == f"{sweep_dir}:" and any("RUNNING" in line for line in found[1:]), found
    mark_damaged_on_purpose(tmp_path / "healthy")
    assert unhealthy_sweeps(tmp_path) == []


def test_an_optuna_sqlite_storage_is_no_damaged_journal(tmp_path):
    """A sweep whose Optuna storage is an SQLite file: its bytes are not read as journal records."""
    import sqlite3

    from sweep.stores.damage import inspect
    from sweep.stores.sweepdir import SweepDir

    folder = SweepDir(tmp_path / NAME)
    folder.path.mkdir()
    storage = tmp_path / "optuna.db"
    with sqlite3.connect(storage) as db:
        db.execute("create table studies (x text)")
    db.close()
    folder.write_config(
        load_config("quickstart", [f"name={NAME}", f"storage=sqlite:///{storage}"], mode="sweep").to_dict()
    )
    (folder / "id").write_text("0123\n")
    assert inspect(folder) == []


def test_no_such_sweep_is_bad_input(tmp_path, capsys):
    code = main(["check", "nothing", "--output-dir", str(tmp_path)])
    assert code == 2
    assert "no sweep 'nothing'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # builds or copies a real sweep
@pytest.mark.parametrize("cut", ["first tell", "second trial's creation"])
def test_repair_then_resume_counts_each_trial_once(built, tmp_path, capsys, ray_address, cut):
    """Several damages at once: the journal damaged in the middle, the config and the id gone, a
    run left RUNNING and a model record without files. The repair says each action; `sweep
    resume` then finishes the sweep with each trial once in Optuna and in MLflow. Cut at the
    second trial's creation, that trial is lost from Optuna: its run is set aside and its
    parameters are queued again."""
    sweep_dir = _copy(built, tmp_path)
    lost = _trial_run(sweep_dir, 1)
    damage_journal_middle(sweep_dir, cut)
    for damage in (damage_config, delete_id, leave_run_running, pending_model):
        damage(sweep_dir)
    code, lines = _check(sweep_dir, capsys, "--repair")
    assert code == 0, lines
    said = "\n".join(lines)
    for action in ("rebuilt sweep.yaml", "restored id", "set optuna.journal aside", "removed the record of logged"):
        assert action in said, said
    if cut != "first tell":
        assert "sgd trial 1: queued again with its parameters" in said, said

    _, cfg = saved_sweep(sweep_dir.parent, NAME, [f"ray_address={ray_address}"])
    open_storage.cache_clear()
    assert run_sweep(cfg).rows
    open_storage.cache_clear()
    code, lines = _check(sweep_dir, capsys)
    assert code == 0, lines

    storage = open_storage(default_storage(sweep_dir))
    for role, name, counted in (("trial", f"{NAME}/sgd", 2), ("reeval", f"{NAME}/sgd/reeval", 1)):
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        assert sum(map(counts_against_budget, trials)) == counted, (role, trials)
        runs = _runs(sweep_dir, role)
        kept = [r for r in runs if "sweep.orphaned" not in r.data.tags]
        assert sorted(int(r.data.tags["optuna.trial_number"]) for r in kept) == [t.number for t in trials]
        by_number = {int(r.data.tags["optuna.trial_number"]): r for r in kept}
        for t in trials:
            assert by_number[t.number].info.run_id == t.user_attrs["mlflow_run_id"]
            assert by_number[t.number].data.tags["sweep.status"] == t.user_attrs["status"]
            assert by_number[t.number].info.status != "RUNNING"
        if role == "trial" and cut != "first tell":
            assert [r.info.run_id for r in runs if "sweep.orphaned" in r.data.tags] == [lost.info.run_id]
            again = trials[1]
            assert {k: str(v) for k, v in again.params.items()} == {k: lost.data.params[k] for k in again.params}


def _runs(sweep_dir: Path, role: str) -> list:
    client = MlflowClient(default_tracking_uri(sweep_dir))
    experiment = client.get_experiment_by_name(NAME)
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("sweep.role") == role]


WEE = {
    "name": "wee",
    "benchmark": {
        "ruleset": "self",
        "studies": 1,
        "workloads": {
            "digits_cnn": {"dataset": "digits", "model": "simple_cnn", "epochs": 1, "batch_size": 64, "target": 0.2}
        },
    },
    "optimizers": ["sgd"],
    "workers": 1,
}


@pytest.mark.slow  # builds or copies a real sweep
def test_a_benchmark_is_checked_child_by_child(ray_address, tmp_path, capsys):
    """A benchmark's child sweeps share its Optuna journal and MLflow file: each child is checked
    as a sweep, and a repair keeps a copy of the shared file before it changes it."""
    import yaml

    config = tmp_path / "wee.yaml"
    config.write_text(yaml.safe_dump(WEE))
    out = tmp_path / "out"
    assert main(["run", str(config), "--output-dir", str(out), f"ray_address={ray_address}"]) == 0
    child = "wee.digits_cnn.s0"
    capsys.readouterr()
    assert main(["check", "wee", "--output-dir", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{child}: healthy: 1 Optuna trial and 1 MLflow run agree"]

    shared = out / "wee" / "mlflow.db"
    client = MlflowClient(f"sqlite:///{shared}")
    experiment = client.get_experiment_by_name(child)
    run = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("sweep.role") == "trial")
    client.update_run(run.info.run_id, status="RUNNING")
    assert main(["check", "wee", "--output-dir", str(out)]) == 1
    said = capsys.readouterr().out
    assert f"{shared}: sgd trial 0's run {run.info.run_id} is left RUNNING" in said, said

    assert main(["check", "wee", "--output-dir", str(out), "--repair"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(f"{child}: repair: kept a copy of {shared} as mlflow.db.before-repair-"), said
    assert said[1].startswith(f"{child}: repair: closed sgd trial 0's run {run.info.run_id} as FINISHED"), said
    assert said[2] == f"{child}: healthy: 1 Optuna trial and 1 MLflow run agree", said

    # a child's sweep.yaml is rebuilt from the copy the benchmark's shared MLflow file keeps
    child_config = out / "wee" / "sweeps" / child / "sweep.yaml"
    before = child_config.read_text()
    child_config.write_text("optimizers: [sgd\n")
    assert main(["check", "wee", "--output-dir", str(out)]) == 1
    assert f"{child_config}: unreadable (line 2" in capsys.readouterr().out
    assert main(["check", "wee", "--output-dir", str(out), "--repair"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(f"{child}: repair: rebuilt sweep.yaml from the copy the MLflow experiment keeps"), said
    assert said[-1] == f"{child}: healthy: 1 Optuna trial and 1 MLflow run agree", said
    assert yaml.safe_load(child_config.read_text()) == yaml.safe_load(before)
