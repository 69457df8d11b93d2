"""A new SQLite tracking store is seeded from an empty one MLflow built once (``tracking.seed_sqlite``)."""
from __future__ import annotations

import sqlite3

from mlflow import MlflowClient

from sweep.stores import tracking


def _schema(path) -> list[tuple]:
    """Every table and index with its definition's clauses as a set (MLflow's own builds list a
    table's constraints in varying order)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("select type, name, sql from sqlite_master where name not like 'sqlite_%'")
        return sorted((kind, name, frozenset(line.strip().rstrip(",") for line in (sql or "").splitlines()))
                      for kind, name, sql in rows)


def test_new_store_is_a_copy_of_what_mlflow_builds_and_an_existing_one_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    built = tmp_path / "built.db"
    MlflowClient(tracking_uri=f"sqlite:///{built}").search_experiments()  # MLflow's own, migrations and all
    seeded = tmp_path / "seeded.db"
    tracking.seed_sqlite(f"sqlite:///{seeded}")
    assert list((tmp_path / "cache" / "optimizer-sweep").glob("mlflow-*-empty.db"))  # the template, built once
    assert _schema(seeded) == _schema(built)
    with sqlite3.connect(seeded) as db, sqlite3.connect(built) as ref:
        assert db.execute("select * from alembic_version").fetchall() == ref.execute(
            "select * from alembic_version").fetchall()

    client = MlflowClient(tracking_uri=f"sqlite:///{seeded}")
    experiment = client.create_experiment("kept", artifact_location=(tmp_path / "a").as_uri())
    client.log_metric(client.create_run(experiment).info.run_id, "m", 1.0)
    tracking.seed_sqlite(f"sqlite:///{seeded}")  # an existing store is never replaced
    assert client.get_experiment_by_name("kept") is not None
    assert not list(tmp_path.glob(".*.part"))


def test_without_a_writable_cache_mlflow_builds_the_store_as_before(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    target = tmp_path / "plain.db"
    tracking.seed_sqlite(f"sqlite:///{target}")
    assert not target.exists()  # left to MLflow
    MlflowClient(tracking_uri=f"sqlite:///{target}").search_experiments()
    assert target.exists()
