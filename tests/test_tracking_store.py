"""A new SQLite tracking store is seeded from an empty one MLflow built once (``tracking.seed_sqlite``)."""

from __future__ import annotations

import sqlite3

import pytest
from mlflow import MlflowClient

from sweep.stores import tracking
from tests.sweep_helpers import text_cells


def _schema(path) -> list[tuple]:
    """Every table and index with its definition's clauses as a set (MLflow's own builds list a
    table's constraints in varying order)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("select type, name, sql from sqlite_master where name not like 'sqlite_%'")
        return sorted(
            (kind, name, frozenset(line.strip().rstrip(",") for line in (sql or "").splitlines()))
            for kind, name, sql in rows
        )


@pytest.mark.slow  # builds MLflow stores (migrations)
def test_new_store_is_a_copy_of_what_mlflow_builds_and_an_existing_one_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    built = tmp_path / "built.db"
    MlflowClient(tracking_uri=f"sqlite:///{built}").search_experiments()  # MLflow's own, migrations and all
    seeded = tmp_path / "seeded.db"
    tracking.seed_sqlite(f"sqlite:///{seeded}")
    assert list((tmp_path / "cache" / "optimizer-sweep").glob("mlflow-*-empty.db"))  # the template, built once
    assert _schema(seeded) == _schema(built)
    with sqlite3.connect(seeded) as db, sqlite3.connect(built) as ref:
        assert (
            db.execute("select * from alembic_version").fetchall()
            == ref.execute("select * from alembic_version").fetchall()
        )

    client = MlflowClient(tracking_uri=f"sqlite:///{seeded}")
    experiment = client.create_experiment("kept", artifact_location=(tmp_path / "a").as_uri())
    client.log_metric(client.create_run(experiment).info.run_id, "m", 1.0)
    tracking.seed_sqlite(f"sqlite:///{seeded}")  # an existing store is never replaced
    assert client.get_experiment_by_name("kept") is not None
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.slow  # builds MLflow stores (migrations)
def test_without_a_writable_cache_mlflow_builds_the_store_as_before(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    target = tmp_path / "plain.db"
    tracking.seed_sqlite(f"sqlite:///{target}")
    assert not target.exists()  # left to MLflow
    MlflowClient(tracking_uri=f"sqlite:///{target}").search_experiments()
    assert target.exists()


@pytest.mark.slow  # builds MLflow stores (migrations)
def test_the_template_holds_no_place_and_a_new_store_s_default_experiment_lives_beside_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # where MLflow puts ./mlruns when it builds the template
    store = tmp_path / "sweep" / "mlflow.db"
    store.parent.mkdir()
    tracking.seed_sqlite(f"sqlite:///{store}")
    [template] = (tmp_path / "cache" / "optimizer-sweep").glob("mlflow-*-empty.db")
    cells = text_cells(template)
    assert cells and not [c for c in cells if "/" in c or "mlruns" in c], cells  # no path of any kind
    with sqlite3.connect(template) as db:
        assert db.execute("select artifact_location, creation_time from experiments").fetchall() == [(None, None)]

    default = MlflowClient(tracking_uri=f"sqlite:///{store}").get_experiment("0")
    assert default.artifact_location == (store.parent / "artifacts" / "0").as_uri()
    assert default.creation_time is not None and not (tmp_path / "mlruns").exists()


@pytest.mark.slow  # builds MLflow stores (migrations)
def test_a_moved_store_s_artifact_locations_follow_the_sweep_directory(tmp_path, monkeypatch):
    """Every location the store records under the old artifacts/ (the experiment's, its runs', its
    logged models', the Default experiment's) moves; others' stay."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = tmp_path / "old" / "sweep"
    old.mkdir(parents=True)
    uri = f"sqlite:///{old / 'mlflow.db'}"
    client = tracking.client(uri)
    exp = client.create_experiment("s", artifact_location=(old / "artifacts").resolve().as_uri())
    other = client.create_experiment("other", artifact_location=(tmp_path / "old" / "sweep-2").as_uri())
    run = client.create_run(exp).info.run_id
    model = client.create_logged_model(exp, name="sgd", source_run_id=run).model_id
    recorded = client.get_experiment(exp).artifact_location
    assert tracking.relocate(uri, recorded, old / "artifacts") == 0  # not moved: nothing to do

    new = tmp_path / "new" / "sweep"
    new.parent.mkdir()
    old.rename(new)
    new_uri = f"sqlite:///{new / 'mlflow.db'}"
    assert tracking.relocate(new_uri, recorded, new / "artifacts") == 4  # experiment, Default, run, model
    moved = MlflowClient(tracking_uri=new_uri)
    here = (new / "artifacts").as_uri()
    assert moved.get_experiment(exp).artifact_location == here
    assert moved.get_experiment("0").artifact_location == f"{here}/0"
    assert moved.get_run(run).info.artifact_uri == f"{here}/{run}/artifacts"
    assert moved.get_logged_model(model).artifact_location == f"{here}/models/{model}/artifacts"
    assert moved.get_experiment(other).artifact_location == (tmp_path / "old" / "sweep-2").as_uri()
    assert not [c for c in text_cells(new / "mlflow.db") if str(old) + "/" in c or c.endswith(str(old))]


@pytest.mark.slow  # builds MLflow stores (migrations)
def test_a_shared_store_is_never_relocated(tmp_path, monkeypatch):
    """A store that is not the sweep's own file (a SQLite file elsewhere, like a shared PostgreSQL
    store) records other drivers' runs too, perhaps seen from hosts that mount the sweep at another
    path: opening the sweep from here must not rewrite it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shared = tmp_path / "shared"
    shared.mkdir()
    uri = f"sqlite:///{shared / 'mlflow.db'}"
    client = tracking.client(uri)
    elsewhere = (tmp_path / "mounted-elsewhere" / "sweep" / "artifacts").as_uri()
    exp = client.create_experiment("s", artifact_location=elsewhere)
    run = client.create_run(exp).info.run_id
    here = tmp_path / "here" / "sweep"
    here.mkdir(parents=True)
    assert not tracking.own_store(uri, here / "artifacts")
    assert tracking.relocate(uri, elsewhere, here / "artifacts") == 0
    assert tracking.follow(uri, "s", here / "artifacts") == 0
    assert client.get_experiment(exp).artifact_location == elsewhere
    assert client.get_run(run).info.artifact_uri == f"{elsewhere}/{run}/artifacts"
    assert not tracking.own_store("postgresql://me@db/mlflow", here / "artifacts")
    assert tracking.own_store(f"sqlite:///{here / 'mlflow.db'}", here / "artifacts")


@pytest.mark.slow  # builds MLflow stores (migrations)
def test_a_new_store_keeps_a_write_ahead_log_and_leaves_none_when_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store = tmp_path / "sweep" / "mlflow.db"
    store.parent.mkdir()
    tracking.seed_sqlite(f"sqlite:///{store}")
    assert sorted(p.name for p in store.parent.iterdir()) == ["mlflow.db"]  # no log left from the seeding
    with sqlite3.connect(store) as db:
        assert db.execute("pragma journal_mode").fetchone() == ("wal",)
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    run = client.create_run(client.create_experiment("s")).info.run_id
    client.log_metric(run, "m", 1.0)
    with sqlite3.connect(store) as db:  # another process reads what the log holds
        assert db.execute("select value from metrics").fetchall() == [(1.0,)]
