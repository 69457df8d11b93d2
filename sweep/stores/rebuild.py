"""What ``sweep check --repair`` rebuilds without losing anything; each step keeps a copy first.

- a damaged ``sweep.yaml`` from the copy the tracking store keeps (``Tag.CONFIG``);
- a missing ``id`` from the id the stores were created with;
- an Optuna journal damaged in the middle: the whole file set aside, the journal cut back to its
  records before the damage, then what MLflow holds put back: a trial RUNNING in what is left
  whose run was closed with an outcome is finished with it, and each search trial lost with the
  cut is queued again with its parameters (its run set aside, as recovery does).

Call these only while holding the sweep's lock (``SweepDir.hold``): no driver may write meanwhile.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweep.core.config import from_saved
from sweep.core.keys import Attr, Tag
from sweep.core.outcome import FINAL_PREFIX, Status, Tally
from sweep.stores import tracking
from sweep.stores.journal import TornTail, set_aside
from sweep.stores.studies import SweepStudy, open_storage, study_name
from sweep.stores.sweepdir import CONFIG, ID, SweepDir

COPY_TAG = ".before-repair-"
LOST = "its trial was lost from the damaged Optuna journal (sweep check --repair)"


def keep_copy(path: Path) -> Path:
    """Copy ``path`` to ``<name>.before-repair-<UTC stamp>`` beside it, never over an earlier
    copy. A SQLite file is copied through SQLite's backup, so its write-ahead log comes along."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    copy, n = path.with_name(f"{path.name}{COPY_TAG}{stamp}"), 1
    while copy.exists():
        n += 1
        copy = path.with_name(f"{path.name}{COPY_TAG}{stamp}-{n}")
    if path.suffix == ".db":
        with contextlib.closing(sqlite3.connect(path)) as src, contextlib.closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
    else:
        shutil.copy2(path, copy)
    return copy


def rebuild_config(sweep_dir: SweepDir, tracking_uri: str) -> str:
    """Write ``sweep.yaml`` again from the tracking store's copy; the damaged file is kept aside.
    Returns the line that says so; raises ``LookupError`` when the store keeps no usable copy."""
    import yaml

    text = tracking.kept_config(tracking_uri, sweep_dir.name)
    if text is None:
        raise LookupError(f"the tracking store keeps no copy of {CONFIG} for {sweep_dir.name!r}")
    values = yaml.safe_load(text)
    from_saved(values, [f"output_dir={sweep_dir.path.parent}"])  # raises ConfigError: not written
    path = sweep_dir / CONFIG
    kept = f"; the damaged file is kept as {keep_copy(path).name}" if path.exists() else ""
    sweep_dir.write_config(values)
    return f"rebuilt {CONFIG} from the copy the MLflow experiment keeps{kept}"


def restore_id(sweep_dir: SweepDir, sweep_id: str) -> str:
    path = sweep_dir / ID
    kept = f"; the old file is kept as {keep_copy(path).name}" if path.exists() else ""
    path.write_text(sweep_id + "\n")
    return f"restored {ID} ({sweep_id}) from the id the stores were created with{kept}"


@dataclass(frozen=True)
class Lane:
    """One study to rebuild: its optimizer, whether it is the re-evaluation study, and its run role."""

    optimizer: str
    reeval: bool

    @property
    def role(self) -> str:
        return tracking.REEVAL_ROLE if self.reeval else tracking.TRIAL_ROLE


def cut_journal(path: Path, offset: int) -> Path:
    """Set the whole journal aside and cut it back to its ``offset`` bytes before the damage."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(offset)
        rest = f.read()
    lines = rest.count(b"\n") + (0 if rest.endswith(b"\n") else 1)
    copy = set_aside(TornTail(path=path, valid_bytes=offset, dropped_bytes=size - offset, dropped_lines=lines))
    open_storage.cache_clear()  # a storage opened before has read the damaged file
    return copy


def put_back(storage: str, tracker: tracking.SweepTracker, name: str, lanes: list[Lane], budget: int) -> list[str]:
    """After ``cut_journal``: finish from MLflow the trials whose outcome was cut, set aside the
    runs of trials the cut lost, and queue the lost search trials again. One line per action."""
    said = []
    for lane in lanes:
        study = SweepStudy.find(storage, study_name(name, lane.optimizer, reeval=lane.reeval))
        if study is None:
            continue
        runs = {
            int(r.data.tags[Tag.TRIAL]): r
            for r in tracker.client.search_runs(
                [tracker.experiment_id],
                max_results=50_000,
                filter_string=f"tags.`{Tag.ROLE}` = '{lane.role}' and tags.`{Tag.OPTIMIZER}` = '{lane.optimizer}'",
            )
            if Tag.ORPHANED not in r.data.tags
        }
        trials = study.trials()
        for t in trials:
            run = runs.get(t.number)
            if run is not None and _recoverable(t, run):
                said.append(_finish_from_run(study, lane, t.number, run))
        lost = [runs[n] for n in sorted(runs) if n >= len(trials)]
        for run in lost:
            tracker.orphan(run.info.run_id, LOST)
        if lost:
            said.append(
                f"{lane.optimizer} {lane.role} {', '.join(r.data.tags[Tag.TRIAL] for r in lost)}: lost with the "
                "damaged journal; MLflow keeps the run, tagged sweep.orphaned"
            )
        if lost and not lane.reeval:
            said += _requeue(study, lane, lost, budget)
    return said


def _recoverable(trial, run) -> bool:
    """A trial RUNNING in what is left whose run holds its outcome, and whose record is whole: the
    driver names the run and the hyperparameters only once every parameter was drawn."""
    attrs = trial.user_attrs
    return (
        trial.state.name == "RUNNING"
        and run.data.tags.get(Tag.STATUS) in Status._value2member_map_
        and attrs.get(Attr.MLFLOW_RUN) == run.info.run_id
        and Attr.HYPERPARAMETERS in attrs
    )


def _finish_from_run(study: SweepStudy, lane: Lane, number: int, run) -> str:
    """Finish a trial in Optuna with the outcome its closed run holds (status, reason, final metrics)."""
    status = Status(run.data.tags[Tag.STATUS])
    metrics = {k[len(FINAL_PREFIX) :]: v for k, v in run.data.metrics.items() if k.startswith(FINAL_PREFIX)}
    study.finish(number, status, run.data.tags.get(Tag.REASON, ""), metrics, metrics.get("val_accuracy"))
    return (
        f"{lane.optimizer} {lane.role} {number}: its outcome ({status.value}) was cut from the journal; "
        "recorded again from its MLflow run"
    )


def _requeue(study: SweepStudy, lane: Lane, lost: list, budget: int) -> list[str]:
    """Queue each lost search trial's parameters again, while the budget has room; the types of
    the parameters come from the study's remaining trials (MLflow keeps them as text)."""
    distributions = {}
    for t in study.trials():
        distributions.update(t.distributions)
    room = budget - Tally.of(budget, study.outcomes()).done - study.waiting()
    said = []
    for run in lost:
        if room <= 0:
            break
        params = {
            k: value
            for k, d in distributions.items()
            if k in run.data.params and (value := _typed(d, run.data.params[k])) is not None
        }
        study.enqueue(params, {})  # not a retry_of: the trial number it names is reused
        room -= 1
        number = run.data.tags[Tag.TRIAL]
        kept = "its parameters" if params else "new parameters (none of its own could be read back)"
        said.append(f"{lane.optimizer} trial {number}: queued again with {kept}")
    return said


def _typed(distribution, text: str):
    """A parameter as MLflow keeps it (text) in the type of its Optuna distribution; None if it does not fit."""
    try:
        if isinstance(distribution, FloatDistribution):
            return float(text)
        if isinstance(distribution, IntDistribution):
            return int(text)
        if isinstance(distribution, CategoricalDistribution):
            return next((c for c in distribution.choices if str(c) == text), None)
    except ValueError:
        return None
    return None
