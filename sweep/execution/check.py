"""``sweep check NAME [--repair]``: read every store of a sweep and check them against each other.

``check`` reads only: the files (``stores.damage.inspect``), then Optuna against MLflow
(``stores.agreement``), then the logged models (``stores.model_records``). ``repair`` does what can
be done without losing anything (``stores.rebuild``, closing runs from Optuna's record, removing
model records that have no files), keeps a copy of every file before it changes it, and says
what it did, one line per action. Both refuse a sweep a live driver holds: its runs are RUNNING
on purpose, and a repair under it would race its writes. A benchmark is checked child sweep by
child sweep (``check_all``, ``repair_all``) once its own files are sound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweep.core.config import SweepConfig, from_saved
from sweep.core.credentials import redacted
from sweep.core.errors import ConfigError, first_line
from sweep.core.keys import Attr, Tag
from sweep.stores import agreement, checkpoints, damage, logged_models, model_records, rebuild, tracking
from sweep.stores.damage import Damage
from sweep.stores.finish import close_from_record
from sweep.stores.logged_models import LoggedModelRecord
from sweep.stores.studies import SweepStudy, study_name
from sweep.stores.sweepdir import BENCHMARK, CONFIG, FINISHED, ID, JOURNAL, MLFLOW_DB, Stores, SweepDir, list_sweeps

CHILDREN = "sweeps"  # a benchmark folder's child sweeps (``core.benchmark``)


@dataclass(frozen=True)
class Checked:
    """What ``check`` found in one sweep."""

    name: str
    repair: str  # the command that repairs it
    damage: tuple[Damage, ...]
    notes: tuple[str, ...] = ()
    trials: int = 0
    runs: int = 0
    models: int = 0

    @property
    def healthy(self) -> bool:
        return not self.damage

    def lines(self) -> list[str]:
        """The short report: one line per damage or note, then the verdict."""
        out = [d.line() for d in self.damage] + [f"{self.name}: note: {n}" for n in self.notes]
        if self.healthy:
            models = f", {self.models} logged model{'s' if self.models != 1 else ''}" if self.models else ""
            out.append(
                f"{self.name}: healthy: {self.trials} Optuna trial{'s' if self.trials != 1 else ''} and "
                f"{self.runs} MLflow run{'s' if self.runs != 1 else ''} agree{models}"
            )
        else:
            n = len(self.damage)
            problems = f"{self.name}: {n} problem{'s' if n != 1 else ''}"
            if any(self.repair in d.remedy for d in self.damage):
                out.append(f"{problems}; `{self.repair}` fixes what it can")
            else:
                out.append(f"{problems}; none that --repair can fix: each line says the way back")
        return out


@dataclass
class Context:
    """The sweep's config and stores as far as they can be read, and the damage found on the way."""

    sweep_dir: SweepDir
    damage: list[Damage]
    cfg: SweepConfig | None = None
    stores: Stores | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> set[Path]:
        return {d.path for d in self.damage}

    def where(self) -> agreement.Where:
        cfg, stores = self.cfg, self.stores
        return agreement.Where(
            cfg.name,
            tuple(cfg.optimizers),
            self.sweep_dir.read_id(),
            stores.storage,
            stores.tracking_uri,
            damage.file_of(stores.storage) or Path(redacted(stores.storage)),
            damage.file_of(stores.tracking_uri) or Path(redacted(stores.tracking_uri)),
            self.sweep_dir.repair_command(),
            self.sweep_dir.state() == FINISHED,
            cfg.checkpoint_every,
            cfg.epochs,
        )

    def own(self, file: str) -> bool:
        """Whether the store kept in the sweep directory's ``file`` is this sweep's."""
        w = self.where()
        return self.sweep_dir / file in (w.optuna_file, w.mlflow_file)

    def missing(self) -> list[Path]:
        """The stores' local files that do not exist (opening them would create them)."""
        stores = self.stores
        files = (damage.file_of(stores.storage), damage.file_of(stores.tracking_uri))
        return [f for f in files if f is not None and not f.exists()]

    def readable(self) -> bool:
        """Whether the stores can be read against each other: a config, and both stores there and whole."""
        w = self.where() if self.cfg is not None else None
        return w is not None and not ({w.optuna_file, w.mlflow_file} & self.damaged) and not self.missing()


def sweep_at(output_dir: str | Path, name: str) -> SweepDir:
    """The sweep or benchmark ``name`` under ``output_dir``; ``ConfigError`` when there is none,
    or a driver holds it."""
    sweep_dir = SweepDir.of(str(output_dir), name)
    files = (CONFIG, ID, JOURNAL, MLFLOW_DB, BENCHMARK)
    if not sweep_dir.path.is_dir() or not any((sweep_dir / f).exists() for f in files):
        raise ConfigError("name", f"no sweep {name!r} under {sweep_dir.path.parent} (see `sweep ls --output-dir DIR`)")
    if sweep_dir.is_locked():
        raise ConfigError(
            "name", f"sweep {name!r} is being run by a driver ({sweep_dir.read_state()}); check it once it stops"
        )
    return sweep_dir


def children(folder: SweepDir) -> list[SweepDir] | None:
    """A benchmark folder's child sweeps (``sweeps/``), each checked as a sweep; None for a sweep."""
    if not (folder / BENCHMARK).exists():
        return None
    return list_sweeps(folder.path / CHILDREN)


def check_all(folder: SweepDir) -> list[Checked]:
    """``check`` of a sweep, or of each child sweep of a benchmark after its own files (its
    ``benchmark.yaml`` and the stores its children share: when one is damaged, only that is said)."""
    kids = children(folder)
    if kids is None:
        return [check(folder)]
    own = damage.inspect(folder)
    if own:
        return [Checked(folder.name, folder.repair_command(), tuple(own))]
    return [check(child) for child in kids]


def _context(sweep_dir: SweepDir) -> Context:
    """Inspect the files, then load the config: from ``sweep.yaml``, or, when that is damaged, from
    the copy the sweep's own tracking store keeps (said as a note; its stores are then inspected
    here, as ``inspect`` stops at the config)."""
    ctx = Context(sweep_dir, list(damage.inspect(sweep_dir)))
    config_damaged = sweep_dir / CONFIG in ctx.damaged
    saved: dict[str, Any] | None = None
    if not config_damaged:
        saved = sweep_dir.saved_config()
    else:
        text = _kept_config(sweep_dir)
        if text is not None:
            saved = yaml.safe_load(text)
            ctx.notes.append(f"read with the copy of {CONFIG} the MLflow experiment keeps")
    if saved is not None:
        try:
            ctx.cfg = from_saved(saved, [f"output_dir={sweep_dir.path.parent}"])
            ctx.stores = sweep_dir.stores(ctx.cfg.storage, ctx.cfg.tracking_uri)
        except ConfigError:
            ctx.cfg = None
    if config_damaged and ctx.cfg is not None:
        ctx.damage += damage.beyond_config(sweep_dir, ctx.stores)
    return ctx


def _config_keeper(sweep_dir: SweepDir) -> Path:
    """The MLflow file whose experiment keeps the sweep's ``sweep.yaml``: the sweep's own, or for
    a benchmark's child sweep (``<benchmark>/sweeps/<child>``) the one its benchmark's children share."""
    benchmark = sweep_dir.path.parent.parent
    if sweep_dir.path.parent.name == CHILDREN and (benchmark / BENCHMARK).exists():
        return benchmark / MLFLOW_DB
    return sweep_dir / MLFLOW_DB


def _kept_config(sweep_dir: SweepDir) -> str | None:
    """The copy of ``sweep.yaml`` the sweep's MLflow file keeps, if that file is whole."""
    db = _config_keeper(sweep_dir)
    if not db.exists() or damage.sqlite_problem(db) is not None:
        return None
    try:
        return tracking.kept_config(f"sqlite:///{db}", sweep_dir.name)
    except Exception:  # noqa: BLE001 - a store that cannot say keeps no copy
        return None


def check(sweep_dir: SweepDir) -> Checked:
    """Read every store of the sweep; nothing is written. A store that fails to read is damage,
    said in one line like the rest, never a traceback."""
    ctx = _context(sweep_dir)
    counts = (0, 0, 0)
    if not ctx.readable():
        if ctx.cfg is None:
            ctx.notes.append("without a config the stores were not compared")
        elif {ctx.where().optuna_file, ctx.where().mlflow_file} & ctx.damaged:
            ctx.notes.append("with a store damaged, Optuna and MLflow were not compared")
        else:
            _guarded(ctx, _missing_store)
    else:
        counts = _guarded(ctx, _compare) or counts
    return Checked(sweep_dir.name, sweep_dir.repair_command(), tuple(ctx.damage), tuple(ctx.notes), *counts)


def _guarded(ctx: Context, step):
    """Run a step that reads the stores; its failure is one line of damage on the stores."""
    try:
        return step(ctx)
    except Exception as exc:  # noqa: BLE001 - a store that fails to read is damage, said in one line
        where = ctx.where()
        ctx.damage.append(
            Damage(
                where.mlflow_file, f"cannot be read with {where.optuna_file.name} ({first_line(exc)})", agreement.HAND
            )
        )
        return None


def _compare(ctx: Context) -> tuple[int, int, int]:
    """Optuna against MLflow, then the logged models and the kept checkpoints: (trials, runs, models)."""
    where = ctx.where()
    agreed = agreement.compare(where)
    ctx.damage += agreed.damage
    ctx.notes += agreed.notes
    models = _models(ctx, agreed)
    _checkpoints(ctx, agreed)
    if ctx.sweep_dir / ID in ctx.damaged and (found := _stored_id(where)):
        ctx.notes.append(f"the stores were created with id {found}: `--repair` restores it")
    return agreed.trials, agreed.runs, len(models)


def _missing_store(ctx: Context) -> None:
    """A store file not there (and not already said to be missing): no trial recorded yet, or, for
    an Optuna journal beside an MLflow file holding trial runs, damage (the trials' record is gone)."""
    where, missing = ctx.where(), ctx.missing()
    if where.optuna_file in missing and where.mlflow_file not in missing:
        experiment = tracking.client(where.tracking_uri).get_experiment_by_name(where.name)
        runs = [] if experiment is None else tracking.client(where.tracking_uri).search_runs([experiment.experiment_id])
        trial_runs = [r for r in runs if r.data.tags.get(Tag.ROLE) in (tracking.TRIAL_ROLE, tracking.REEVAL_ROLE)]
        if trial_runs:
            n = len(trial_runs)
            problem = f"is missing although MLflow holds {n} trial run{'s' if n != 1 else ''}"
            ctx.damage.append(
                Damage(where.optuna_file, problem, "restore it from a copy: nothing else holds the studies")
            )
            return
    ctx.notes.append(f"{', '.join(p.name for p in missing)} not created yet: nothing to compare")


def _models(ctx: Context, agreed: agreement.Agreement) -> list[LoggedModelRecord]:
    """The logged models of the sweep's runs; each that is not READY, not in the sweep's
    experiment, or whose files are missing is damage."""
    if agreed.experiment_id is None:
        return []
    where, stores = ctx.where(), ctx.stores
    here = ctx.sweep_dir.artifacts if tracking.own_store(stores.tracking_uri, ctx.sweep_dir.artifacts) else None
    models = model_records.of_runs(stores.tracking_uri, agreed.experiment_id, agreed.run_ids, here)
    for m in models:
        label = f"logged model {m.name} ({m.model_id})"
        removable = f"run {where.repair} (it removes the record: it has no files to load)"
        if m.status != model_records.READY:
            remedy = removable if not m.files else agreement.HAND
            files = "" if m.files else " and has no files"
            ctx.damage.append(Damage(where.mlflow_file, f"{label} is {m.status}{files}", remedy))
        elif not m.files:
            ctx.damage.append(Damage(where.mlflow_file, f"{label}: its files are missing", removable))
            continue  # its record goes with the repair, wherever it is
        if m.experiment_id != agreed.experiment_id:
            ctx.damage.append(
                Damage(where.mlflow_file, f"{label} is in another experiment ({m.experiment_id})", agreement.HAND)
            )
    return models


def _checkpoints(ctx: Context, agreed: agreement.Agreement) -> None:
    """The checkpoints the sweep keeps: each current model's run's (its last epoch, from which the
    model was built) must exist. Each optimizer's best trial's is kept too, but a repair or a
    resume may make another trial the best after its checkpoint was tidied: its absence is a note."""
    for what, run_id in dict.fromkeys(agreed.model_runs):
        if not _has_checkpoint(ctx.stores, run_id):
            ctx.damage.append(
                Damage(
                    _checkpoint_folder(ctx, run_id),
                    f"{what} (run {run_id}) has no checkpoint left",
                    "nothing repairs this by itself: the model and the records stand; rebuilding the model is lost",
                )
            )
    for what, run_id in dict.fromkeys(agreed.keeps_checkpoint):
        if not _has_checkpoint(ctx.stores, run_id):
            ctx.notes.append(f"{what} (run {run_id}) has no checkpoint: resuming it would start over")


def _has_checkpoint(stores: Stores, run_id: str) -> bool:
    try:
        return bool(checkpoints.stored_epochs(stores.tracking_uri, run_id, stores.artifacts))
    except Exception:  # noqa: BLE001 - a store that cannot list them shows none
        return False


def _checkpoint_folder(ctx: Context, run_id: str) -> Path:
    """Where a run's checkpoints are: in the sweep's ``artifacts/``, or (a server) its store."""
    if ctx.stores.artifacts:
        return Path(ctx.stores.artifacts) / run_id / "artifacts" / checkpoints.FOLDER
    return ctx.where().mlflow_file


def _stored_id(where: agreement.Where) -> str | None:
    """The id the stores were created with, when the studies and the experiment that hold one agree."""
    ids = set()
    experiment = tracking.client(where.tracking_uri).get_experiment_by_name(where.name)
    if experiment is not None and Tag.SWEEP_ID in experiment.tags:
        ids.add(experiment.tags[Tag.SWEEP_ID])
    for opt in where.optimizers:
        study = SweepStudy.find(where.storage, study_name(where.name, opt))
        if study is not None and Attr.SWEEP_ID in study.study.user_attrs:
            ids.add(study.study.user_attrs[Attr.SWEEP_ID])
    return ids.pop() if len(ids) == 1 else None


def repair_all(folder: SweepDir) -> list[tuple[str, str]]:
    """``repair`` of a sweep, or of each child sweep of a benchmark (its folder held meanwhile):
    (sweep name, line) per action."""
    kids = children(folder)
    if kids is None:
        return [(folder.name, line) for line in repair(folder)]
    with folder.hold() as held:
        if not held:
            raise ConfigError("name", f"benchmark {folder.name!r} is being run by a driver; repair it once it stops")
        return [(child.name, line) for child in kids for line in repair(child)]


def repair(sweep_dir: SweepDir) -> list[str]:
    """Repair what can be repaired without losing anything, under the sweep's lock; one line
    per action. Raises ``ConfigError`` when a driver holds the sweep."""
    with sweep_dir.hold() as held:
        if not held:
            raise ConfigError("name", f"sweep {sweep_dir.name!r} is being run by a driver; repair it once it stops")
        return Repair(sweep_dir).run()


class Repair:
    """One repair, in the order each step needs the one before: the config (to find the stores),
    the journal, the id, then what the stores disagree on. MLflow's own file is copied once,
    before its first change."""

    def __init__(self, sweep_dir: SweepDir):
        self.sweep_dir = sweep_dir
        self.said: list[str] = []
        self.mlflow_copied = False

    def before_mlflow_write(self, ctx: Context) -> None:
        """Keep a copy of the MLflow file (the sweep's own or a benchmark's shared one) before
        the first change; a server's store is its own keeper."""
        db = damage.file_of(ctx.stores.tracking_uri)
        if self.mlflow_copied or db is None:
            return
        self.mlflow_copied = True
        self.said.append(f"kept a copy of {db} as {rebuild.keep_copy(db).name}")

    def run(self) -> list[str]:
        """Each step in turn; one that fails stops the repair in one line (what was done stands,
        with its copies)."""
        try:
            return self.steps()
        except Exception as exc:  # noqa: BLE001 - a damaged store is said, never a traceback
            return [*self.said, f"stopped: {first_line(exc)}; what is said above was done, with its copies"]

    def steps(self) -> list[str]:
        ctx = _context(self.sweep_dir)
        if self.sweep_dir / CONFIG in ctx.damaged:
            self.config(ctx)
            ctx = _context(self.sweep_dir)
        if ctx.cfg is None:
            return [*self.said, f"cannot go on without a config: {CONFIG} is damaged and MLflow keeps no copy of it"]
        if not ctx.readable() and ctx.where().mlflow_file in ctx.damaged:
            return [*self.said, "cannot go on: the MLflow store is damaged; nothing else was changed"]
        if self.sweep_dir / JOURNAL in ctx.damaged and ctx.own(JOURNAL):
            self.journal(ctx)
            ctx = _context(self.sweep_dir)
        if self.sweep_dir / ID in ctx.damaged:
            self.identity(ctx)
        if ctx.readable():
            agreed = agreement.compare(ctx.where())
            self.close_runs(ctx, agreed)
            self.end_runs(ctx, agreed)
            self.models(ctx, agreed)
        return self.said or ["nothing to repair"]

    def config(self, ctx: Context) -> None:
        if _kept_config(self.sweep_dir) is None:
            self.said.append(f"could not rebuild {CONFIG}: its MLflow file is damaged or keeps no copy")
            return
        try:
            self.said.append(rebuild.rebuild_config(self.sweep_dir, f"sqlite:///{_config_keeper(self.sweep_dir)}"))
        except (LookupError, ConfigError) as exc:
            self.said.append(f"could not rebuild {CONFIG}: {exc}")

    def journal(self, ctx: Context) -> None:
        """Set the damaged journal aside, cut it back before the damage, then put back from
        MLflow what the cut lost (``rebuild.put_back``)."""
        where = ctx.where()
        if where.mlflow_file in ctx.damaged:
            return
        found = damage.journal_damage(self.sweep_dir.journal)
        if found is None:
            return
        if where.mlflow_file not in ctx.missing():
            self.before_mlflow_write(ctx)
        copy = rebuild.cut_journal(self.sweep_dir.journal, found.offset)
        self.said.append(
            f"set {JOURNAL} aside as {copy.name} (a damaged record at byte {found.offset}) and cut it back "
            f"to the {found.offset} bytes of records before it"
        )
        if where.mlflow_file in ctx.missing():  # no MLflow file to put anything back from
            return
        sweep_id = self.sweep_dir.read_id() or _stored_id(where) or ""
        stores = ctx.stores
        tracker = tracking.SweepTracker(
            stores.tracking_uri, where.name, self.sweep_dir.artifacts if stores.local_tracking else None, sweep_id
        )
        lanes = [rebuild.Lane(opt, False) for opt in where.optimizers]
        lanes += [rebuild.Lane(opt, True) for opt in where.optimizers if ctx.cfg.reeval_seeds]
        self.said += rebuild.put_back(stores.storage, tracker, where.name, lanes, ctx.cfg.trials)

    def identity(self, ctx: Context) -> None:
        found = _stored_id(ctx.where()) if ctx.readable() else None
        if found is None:
            self.said.append(f"could not restore {ID}: the stores do not agree on one")
        else:
            self.said.append(rebuild.restore_id(self.sweep_dir, found))

    def close_runs(self, ctx: Context, agreed: agreement.Agreement) -> None:
        where = ctx.where()
        for role, opt, number, run_id in agreed.to_close:
            study = SweepStudy.find(where.storage, study_name(where.name, opt, reeval=role == tracking.REEVAL_ROLE))
            self.before_mlflow_write(ctx)
            outcome = close_from_record(study, where.tracking_uri, run_id, number)
            self.said.append(
                f"closed {opt} {role} {number}'s run {run_id} as {outcome.record.mlflow_status}, from Optuna's record"
            )

    def end_runs(self, ctx: Context, agreed: agreement.Agreement) -> None:
        """Close a finished sweep's parent and report runs left RUNNING (as its report does)."""
        for what, run_id in agreed.to_end:
            self.before_mlflow_write(ctx)
            tracking.client(ctx.stores.tracking_uri).set_terminated(run_id, status="FINISHED")
            self.said.append(f"closed {what} {run_id} as FINISHED: the sweep finished")

    def models(self, ctx: Context, agreed: agreement.Agreement) -> None:
        stores = ctx.stores
        here = self.sweep_dir.artifacts if tracking.own_store(stores.tracking_uri, self.sweep_dir.artifacts) else None
        if agreed.experiment_id is None:
            return
        for m in model_records.of_runs(stores.tracking_uri, agreed.experiment_id, agreed.run_ids, here):
            if not m.files:  # nothing can load it; a resume logs the run's model again if it was current
                self.before_mlflow_write(ctx)
                logged_models.remove(stores.tracking_uri, m.model_id)
                self.said.append(f"removed the record of logged model {m.name} ({m.model_id}): {m.status}, no files")
