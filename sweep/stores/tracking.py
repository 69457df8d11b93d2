"""MLflow side of a sweep: one experiment, a parent run per optimizer, one child run per trial.

Runs are found by tags as well as by the run id kept in Optuna's user attributes, so a driver
killed between two writes never leaves a trial with two runs. Everything is logged with
``log_batch`` (one request per epoch, not one per metric).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from sweep.core.keys import Tag
from sweep.core.outcome import FINAL_PREFIX, TrialOutcome

# Run roles: a parent per optimizer, its search trials and re-evaluations, and one run for the sweep.
PARENT_ROLE, TRIAL_ROLE, REEVAL_ROLE, SWEEP_ROLE = "parent", "trial", "reeval", "sweep"
MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag's value (a run's description is one)
MAX_EXPERIMENT_TAG_LENGTH = 20000  # and on an experiment tag's
# Makes the MLflow UI open a sweep on its runs table rather than the GenAI tracing overview.
MODEL_TRAINING = "custom_model_development"


# MLflow's SQL store logs "Creating initial tables..." at INFO, and every database error with its
# whole traceback before raising it; the sweep turns that error into one line (StoreUnavailable),
# so the log would only add a library traceback to the terminal. Set here only, for every process.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
# MLflow's client prints "View run ... at: <tracking URI>" on every run it ends against a server:
# the URI with its user:password, twice per trial, into the terminal and the workers' logs.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# ...and a progress bar for every artifact it downloads (a checkpoint read back, a model logged).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@functools.lru_cache(maxsize=4)
def client(uri: str) -> MlflowClient:
    """One client per process and URI: workers log many trials through it."""
    seed_sqlite(uri)
    return MlflowClient(tracking_uri=uri)


def seed_sqlite(uri: str) -> None:
    """A new SQLite tracking store starts as a copy of an empty one that MLflow built once per
    machine and MLflow version (under ~/.cache/optimizer-sweep): MLflow builds a new database by
    running its whole chain of schema migrations, 1.6 s on 2 idle cores and 3 s busy, on every new
    sweep; the copy takes milliseconds. Best effort: without the cache, MLflow builds it as before.
    The copy never replaces a file (a hard link, refused if the file exists).

    The template holds no place and no time of its own: the copy's Default experiment (which
    nothing of a sweep logs to) gets its artifact location beside the new store,
    ``<folder>/artifacts/0`` (inside the sweep directory for a sweep's default store, so it moves
    with it), and the time of the copy.

    The copy keeps its journal ahead of the database (SQLite's write-ahead log, as the Optuna
    SQLite storage does): a commit writes and syncs one file instead of creating, syncing and
    deleting a rollback journal, and the driver's and the workers' writes no longer block each
    other's reads: a trial's MLflow calls take a fifth to a quarter less (``bench/short_trials.py``),
    and a commit is as durable as before. The log lives beside the store (``mlflow.db-wal``) until
    SQLite folds it in: copy a store with its folder."""
    if not uri.startswith("sqlite:///"):
        return
    target = Path(uri[len("sqlite:///") :])
    if target.exists() or not target.parent.is_dir():
        return
    try:
        template = _empty_store_template()
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        shutil.copyfile(template, part)
        try:
            _place_default_experiment(part, (target.parent.resolve() / "artifacts" / "0").as_uri(), _now_ms())
            _write_ahead(part)
            os.link(part, target)
        except FileExistsError:  # another process created it meanwhile: theirs stands
            pass
        finally:
            part.unlink(missing_ok=True)
    except (OSError, sqlite3.Error):
        return


def _empty_store_template() -> Path:
    """The empty store for this MLflow version, built by MLflow itself the first time, then
    stripped of what MLflow wrote about where and when it was built: the Default experiment's
    artifact location (``./mlruns/0`` under the folder of whichever process built it) and its
    times. (Templates named ``...-empty.db`` without ``portable`` kept that location.)"""
    from importlib.metadata import version

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optimizer-sweep"
    template = cache / f"mlflow-{version('mlflow')}-portable-empty.db"
    if template.exists():
        return template
    cache.mkdir(parents=True, exist_ok=True)
    building = cache / f".building-{os.getpid()}.db"
    building.unlink(missing_ok=True)
    MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments(max_results=1)  # creates it
    _place_default_experiment(building, None, None)
    os.replace(building, template)
    return template


def _place_default_experiment(path: Path, location: str | None, when: int | None) -> None:
    """Set the Default experiment's artifact location and its creation and update times (ms) in
    the SQLite file ``path`` (None: none)."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "update experiments set artifact_location = ?, creation_time = ?, last_update_time = ? "
            "where experiment_id = 0",
            (location, when, when),
        )


def _write_ahead(path: Path) -> None:
    """Put the SQLite file ``path`` in write-ahead-log mode (kept in the file; no other connection
    may be open). Closing leaves no log behind."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _params(values: Mapping[str, Any]) -> list[Param]:
    return [Param(str(k), str(v)[:6000]) for k, v in values.items()]


class SweepTracker:
    """Driver-side operations: experiment, parent runs, creating and closing child runs."""

    def __init__(self, uri: str, experiment: str, artifact_dir: Path | None, sweep_id: str):
        self.uri = uri
        self.client = client(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
            self.experiment_id = self.client.create_experiment(
                experiment,
                artifact_location=location,
                tags={Tag.EXPERIMENT_KIND: MODEL_TRAINING, Tag.SWEEP_ID: sweep_id},
            )
        else:
            self.experiment_id = found.experiment_id
            if Tag.SWEEP_ID not in found.tags:
                self.client.set_experiment_tag(self.experiment_id, Tag.SWEEP_ID, sweep_id)
            if artifact_dir is not None:
                relocate(uri, found.artifact_location, artifact_dir)

    def keep_config(self, text: str) -> None:
        """Keep ``sweep.yaml``'s text (store URLs without passwords) on the experiment, so that
        ``sweep check --repair`` can rebuild a damaged one. Longer than MLflow allows: not kept."""
        if len(text) <= MAX_EXPERIMENT_TAG_LENGTH:
            self.client.set_experiment_tag(self.experiment_id, Tag.CONFIG, text)

    def _find(self, filter_string: str):
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=2)
        return runs[0] if runs else None

    def parent_run(self, optimizer: str, fixed_params: Mapping[str, Any]) -> str:
        run = self._find(f"tags.`{Tag.ROLE}` = '{PARENT_ROLE}' and tags.`{Tag.OPTIMIZER}` = '{optimizer}'")
        if run is not None:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        run = self.client.create_run(
            self.experiment_id, run_name=optimizer, tags={Tag.ROLE: PARENT_ROLE, Tag.OPTIMIZER: optimizer}
        )
        self.client.log_batch(run.info.run_id, params=_params({**fixed_params, "optimizer": optimizer}))
        return run.info.run_id

    def trial_run(
        self,
        parent_id: str,
        optimizer: str,
        number: int,
        params: Mapping[str, Any],
        retry_of: int | None = None,
        role: str = TRIAL_ROLE,
        extra_tags: Mapping[str, str] = (),
        run_name: str | None = None,
        new: bool = False,
    ) -> str:
        """The trial's run (a search trial's, or a re-evaluation's with ``role=reeval``): created
        once, found again by tags if it already exists. ``new``: the caller knows no run of this
        trial can exist (the driver's own fresh trials), so the search is skipped."""
        existing = None if new else self.find_trial_run(optimizer, number, role)
        if existing is not None:
            return existing
        tags = {
            Tag.ROLE: role,
            Tag.OPTIMIZER: optimizer,
            Tag.TRIAL: str(number),
            Tag.PARENT: parent_id,
            **dict(extra_tags),
        }
        if retry_of is not None:
            tags[Tag.RETRY_OF] = str(retry_of)
        run = self.client.create_run(self.experiment_id, run_name=run_name or f"{optimizer}-{number}", tags=tags)
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def find_trial_run(self, optimizer: str, number: int, role: str = TRIAL_ROLE) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            max_results=10,
            filter_string=(
                f"tags.`{Tag.ROLE}` = '{role}' and tags.`{Tag.OPTIMIZER}` = '{optimizer}' "
                f"and tags.`{Tag.TRIAL}` = '{number}'"
            ),
        )
        runs = [r for r in runs if Tag.ORPHANED not in r.data.tags]
        return runs[0].info.run_id if runs else None

    def trial_runs(self, optimizer: str, role: str = TRIAL_ROLE) -> dict[int, str]:
        """Trial number -> run id of this optimizer's trial (or re-evaluation) runs, orphans left out."""
        runs = self.client.search_runs(
            [self.experiment_id],
            max_results=50_000,
            filter_string=(f"tags.`{Tag.ROLE}` = '{role}' and tags.`{Tag.OPTIMIZER}` = '{optimizer}'"),
        )
        return {int(r.data.tags[Tag.TRIAL]): r.info.run_id for r in runs if Tag.ORPHANED not in r.data.tags}

    def orphan(self, run_id: str, why: str) -> None:
        """Set a run aside whose trial Optuna no longer has; its trial number will be reused."""
        self.client.log_batch(run_id, tags=[RunTag(Tag.ORPHANED, "true"), RunTag(Tag.REASON, why[:5000])])
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status="KILLED")

    def running_trial_runs(self) -> dict[tuple[str, str, int], str]:
        """(role, optimizer, trial number) -> run id of every trial and re-evaluation run still RUNNING."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=50_000, filter_string="attributes.status = 'RUNNING'"
        )
        return {
            (r.data.tags[Tag.ROLE], r.data.tags[Tag.OPTIMIZER], int(r.data.tags[Tag.TRIAL])): r.info.run_id
            for r in runs
            if r.data.tags.get(Tag.ROLE) in (TRIAL_ROLE, REEVAL_ROLE) and Tag.ORPHANED not in r.data.tags
        }

    def find_parent(self, optimizer: str) -> str | None:
        run = self._find(f"tags.`{Tag.ROLE}` = '{PARENT_ROLE}' and tags.`{Tag.OPTIMIZER}` = '{optimizer}'")
        return run.info.run_id if run is not None else None

    def sweep_run(self) -> str:
        """The sweep-level run that holds the report: created once, found again by its tag."""
        run = self._find(f"tags.`{Tag.ROLE}` = '{SWEEP_ROLE}'")
        if run is not None:
            return run.info.run_id
        return self.client.create_run(self.experiment_id, run_name="report", tags={Tag.ROLE: SWEEP_ROLE}).info.run_id

    def describe(
        self, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str], description: str, final: bool
    ) -> None:
        """Summary metrics, tags, and a Markdown description (the run's note, shown in the UI; a tag,
        so it needs no artifact store). ``final``: the sweep is finished, so the run is closed."""
        now = _now_ms()
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(Tag.NOTE, description[:MAX_TAG_LENGTH]), *(RunTag(k, str(v)) for k, v in tags.items())],
        )
        if final:
            self.client.set_terminated(run_id, status="FINISHED")


def model_uri(uri: str, run_id: str) -> str | None:
    """The URI of the model logged on a run (``best_model``), if any."""
    return client(uri).get_run(run_id).data.tags.get(Tag.MODEL_URI)


def artifact_uri(uri: str, run_id: str, root: str | None = None) -> str:
    """Where a run's artifacts are: under ``root`` (a sweep directory's ``artifacts/``, in the
    layout MLflow gave them, ``<root>/<run id>/artifacts``) when the sweep has no tracking server,
    so a moved sweep's artifacts are found and written where the sweep is now; otherwise where
    MLflow says (the server's artifact proxy)."""
    if root is not None:
        return (Path(root) / run_id / "artifacts").resolve().as_uri()
    return client(uri).get_run(run_id).info.artifact_uri


# Every artifact location an MLflow SQL store records, by table: (table, key column, location column).
LOCATIONS = (
    ("experiments", "experiment_id", "artifact_location"),
    ("runs", "run_uuid", "artifact_uri"),
    ("logged_models", "model_id", "artifact_location"),
)


def own_store(uri: str, artifact_dir: Path) -> bool:
    """Whether ``uri`` is a sweep directory's own SQLite store: the file beside its ``artifacts/``."""
    if not uri.startswith("sqlite:///"):
        return False
    return Path(uri[len("sqlite:///") :]).resolve().parent == artifact_dir.resolve().parent


def relocate(uri: str, recorded: str | None, artifact_dir: Path) -> int:
    """Point a store's artifact locations at a sweep directory's ``artifacts/`` where it is now.

    MLflow keeps absolute locations (the experiment's, each run's, each logged model's), written
    when the sweep ran where it was then. Checkpoints and the report are read and written through
    ``artifact_uri(..., root)`` from the sweep directory anyway, but MLflow itself (its UI's
    artifact viewer, ``mlflow.pytorch.load_model("models:/m-...")``) follows the recorded ones.
    So once a moved or copied sweep is opened by a sweep command (``run``, ``resume``, ``report``,
    ``ui``), every location under ``recorded`` (the experiment's, e.g. ``file:///old/artifacts``)
    is rewritten to the same place under ``artifact_dir``. Returns how many were; 0 when nothing
    moved, or a location that is not a local path.

    Only the sweep's own store is rewritten: the SQLite file beside ``artifact_dir`` (it moved
    with the sweep). A shared store (PostgreSQL, or a SQLite file elsewhere) is other drivers'
    record too, perhaps read from hosts that mount the sweep at another path: it is never touched."""
    here = artifact_dir.resolve()
    if not recorded or not own_store(uri, here):
        return 0
    if recorded.startswith("file:"):
        new = here.as_uri()
    elif recorded.startswith("/"):
        new = str(here)
    else:  # an object store or a server's proxy: nothing of it lives in the sweep directory
        return 0
    old = recorded.rstrip("/")
    if old == new:
        return 0
    from sqlalchemy import create_engine, text

    engine = create_engine(uri)
    moved = 0
    try:
        with engine.begin() as db:
            for table, key, column in LOCATIONS:
                rows = db.execute(
                    text(
                        f"select {key}, {column} from {table} where {column} = :old or "
                        f"substr({column}, 1, :n) = :prefix"
                    ),
                    {"old": old, "n": len(old) + 1, "prefix": old + "/"},
                ).all()
                for row_key, location in rows:
                    db.execute(
                        text(f"update {table} set {column} = :new where {key} = :key"),
                        {"new": new + location[len(old) :], "key": row_key},
                    )
                moved += len(rows)
    finally:
        engine.dispose()
    return moved


def follow(uri: str, experiment: str, artifact_dir: Path) -> int:
    """``relocate`` the store's locations of a sweep's experiment (by name) to ``artifact_dir``."""
    found = client(uri).get_experiment_by_name(experiment)
    return 0 if found is None else relocate(uri, found.artifact_location, artifact_dir)


def kept_config(uri: str, name: str) -> str | None:
    """The ``sweep.yaml`` text the experiment ``name`` keeps (``SweepTracker.keep_config``), if any."""
    found = client(uri).get_experiment_by_name(name)
    return None if found is None else found.tags.get(Tag.CONFIG)


def foreign_experiment(uri: str, name: str, sweep_id: str) -> bool:
    """Whether the tracking store's experiment of this sweep's name belongs to another sweep."""
    found = client(uri).get_experiment_by_name(name)
    return found is not None and found.tags.get(Tag.SWEEP_ID, sweep_id) != sweep_id


EPOCH_MARKER = "val_accuracy"  # every epoch logs it


def epoch_metrics(metrics: Mapping[str, float], step: int) -> list[Metric]:
    """One epoch's metrics, stamped once: sending the same objects again after a lost response
    stores nothing twice (the tracking store skips a metric whose key, value, timestamp and step
    it already holds)."""
    now = _now_ms()
    return [Metric(k, float(v), now, step) for k, v in metrics.items()]


def log_metrics(uri: str, run_id: str, metrics: list[Metric]) -> None:
    """Worker side: one batch request per epoch."""
    client(uri).log_batch(run_id, metrics=metrics)


def tag_run(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def logged_steps(uri: str, run_id: str) -> set[int]:
    """The epochs a run already holds (an epoch's metrics are written in one ``log_batch``)."""
    return {m.step for m in client(uri).get_metric_history(run_id, EPOCH_MARKER)}


def close_run(uri: str, run_id: str, outcome: TrialOutcome, timestamp_ms: int | None = None) -> None:
    """Write a trial's outcome to its run and close it; a closed run is left as it is.

    Every run gets its final metrics, its status tag and an MLflow run status that shows the
    outcome at a glance (FINISHED ok, KILLED pruned or interrupted, FAILED diverged or failed).
    A caller that may send the close again (a lost response) fixes ``timestamp_ms`` once, so the
    final metrics are stored once."""
    if client(uri).get_run(run_id).info.status != "RUNNING":
        return
    tags = {
        Tag.STATUS: outcome.status.value,
        Tag.STATE: outcome.record.optuna_state,
        Tag.ATTEMPTS: str(outcome.attempts),
    }
    if outcome.reason:
        tags[Tag.REASON] = outcome.reason[:5000]
    now = _now_ms() if timestamp_ms is None else timestamp_ms
    client(uri).log_batch(
        run_id,
        metrics=[Metric(f"{FINAL_PREFIX}{k}", float(v), now, 0) for k, v in outcome.metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client(uri).set_terminated(run_id, status=outcome.record.mlflow_status)
