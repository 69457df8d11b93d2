"""A sweep's own files, checked before a command uses them: a damaged one is one line naming the
file, what is wrong with it and the way back, never a traceback deep inside a store's client.

What a bad copy, a sync tool, a disk error or an editor leaves, and what each check finds
(read-only, files only, no store client):

- ``sweep.yaml`` (or a benchmark's ``benchmark.yaml``) that is empty, not UTF-8, not YAML, not a
  mapping (``SweepDir.saved_config``), or not a config this version can load;
- ``id`` missing: it is written before ``sweep.yaml``, so a sweep with a config and no id lost it
  (without it the stores' records look like another sweep's);
- ``mlflow.db`` missing although the sweep recorded trials (a new empty one would orphan every
  Optuna trial from its run), or not a whole SQLite database (cut short, overwritten, malformed);
- ``optuna.journal`` with a damaged record that other records follow, named by byte offset. A
  damaged *last* record is not damage here: it is what a crash mid-write leaves, and the driver
  sets it aside itself (``journal.py``); one in the middle would cost every record after it.

``sweep check`` (``sweep.execution.check``) starts from ``inspect`` and goes on to check the
stores against each other.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sweep.core.config import from_saved
from sweep.core.errors import ConfigError, SweepDamaged
from sweep.stores.journal import find_torn_tail
from sweep.stores.sweepdir import CONFIG, ID, JOURNAL, MLFLOW_DB, REPORT, STATE, SUMMARY, Stores, SweepDir

SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Damage:
    """One damaged file: ``line`` is what every command says about it."""

    path: Path
    problem: str
    remedy: str

    @property
    def file(self) -> str:
        return self.path.name

    def line(self) -> str:
        return f"{self.path}: {self.problem}; {self.remedy}"

    def error(self) -> SweepDamaged:
        return SweepDamaged(str(self.path), self.problem, self.remedy)


@dataclass(frozen=True)
class JournalDamage:
    """A record that does not parse, followed by ``records_after`` lines Optuna could not replay."""

    path: Path
    offset: int  # the damaged record's first byte
    line: int  # its line number, from 1
    records_after: int


def file_of(url: str | None) -> Path | None:
    """The local file behind a ``journal:///`` or ``sqlite:///`` URL, else None."""
    for scheme in ("journal:///", "sqlite:///"):
        if url and url.startswith(scheme):
            return Path(url[len(scheme) :])
    return None


def journal_damage(path: Path) -> JournalDamage | None:
    """A record damaged before the journal's last line; None for a healthy journal or a torn tail."""
    torn = find_torn_tail(path)
    if torn is None or torn.dropped_lines <= 1:
        return None
    with open(path, "rb") as journal:
        line = journal.read(torn.valid_bytes).count(b"\n") + 1
    return JournalDamage(Path(path), torn.valid_bytes, line, torn.dropped_lines - 1)


def sqlite_problem(path: Path, thorough: bool = True) -> str | None:
    """What is wrong with an SQLite file, or None. The header and the size it records are read
    always; ``thorough`` also runs SQLite's ``quick_check`` on the main file (every page;
    milliseconds per MB)."""
    with open(path, "rb") as db:
        header = db.read(100)
    if not header:
        return "is empty"
    if len(header) < 100 or not header.startswith(SQLITE_HEADER):
        return "is not an SQLite database"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    size = path.stat().st_size
    header_size_valid = header[92:96] == header[24:28]  # SQLite's own rule for trusting the count
    if header_size_valid and pages and size < pages * page_size:
        return f"is cut short ({size} of its {pages * page_size} bytes)"
    if not thorough:
        return None
    try:
        # immutable: no lock, no WAL index (-shm) touched: a check writes nothing; the WAL's own
        # frames are checksummed, and SQLite drops damaged ones itself
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            found = [row[0] for row in db.execute("PRAGMA quick_check")]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"is damaged ({exc})"
    return None if found == ["ok"] else f"is damaged ({found[0]})"


def _has_records(sweep_dir: SweepDir, journal: Path | None) -> bool:
    """Whether the sweep recorded trials or results (a new empty MLflow store would orphan them)."""
    if journal is not None and journal.exists() and journal.stat().st_size > 0:
        return True
    return (sweep_dir / SUMMARY).exists() or (sweep_dir / REPORT).exists()


def _has_run(sweep_dir: SweepDir, journal: Path | None, db: Path | None) -> bool:
    """Whether a driver ever held the sweep (its id comes first): a folder holding only a
    ``sweep.yaml`` has not."""
    return _has_records(sweep_dir, journal) or (sweep_dir / STATE).exists() or (db is not None and db.exists())


def inspect(sweep_dir: SweepDir, stores: Stores | None = None, thorough: bool = True) -> list[Damage]:
    """Every damaged file of the sweep (or benchmark folder), read-only. ``stores`` default to the
    saved config's; the Optuna journal and the MLflow SQLite file are checked where they are local
    files. ``thorough=False`` (``sweep ls``) skips reading every page of the SQLite file."""
    if not sweep_dir.path.is_dir():
        return []
    try:
        saved = sweep_dir.saved_config()
        benchmark = sweep_dir.saved_benchmark() if saved is None else None
    except SweepDamaged as exc:
        return [Damage(Path(exc.path), exc.problem, exc.remedy)]
    if benchmark is not None:  # its children's shared stores live in its folder
        return _store_damage(sweep_dir, sweep_dir / JOURNAL, sweep_dir / MLFLOW_DB, thorough)
    if saved is None:
        return _config_missing(sweep_dir)
    try:
        cfg = from_saved(saved, [f"output_dir={sweep_dir.path.parent}"])
    except ConfigError as exc:
        problem = f"does not hold a config this version can load ({exc})"
        return [Damage(sweep_dir / CONFIG, problem, f"restore it from a copy, or run: {sweep_dir.repair_command()}")]
    return beyond_config(sweep_dir, stores or sweep_dir.stores(cfg.storage, cfg.tracking_uri), thorough)


def beyond_config(sweep_dir: SweepDir, stores: Stores, thorough: bool = True) -> list[Damage]:
    """What ``inspect`` checks once the config is read: the id, and the stores' local files
    (``sweep check`` calls it too, for a sweep read with the copy of its config MLflow keeps)."""
    # an Optuna SQLite storage (sqlite:///) is no journal: read as one, its first bytes were "damaged"
    journal = file_of(stores.storage) if stores.storage.startswith("journal:///") else None
    db = file_of(stores.tracking_uri)
    found = []
    if sweep_dir.read_id() is None and _has_run(sweep_dir, journal, db):
        found.append(
            Damage(
                sweep_dir / ID,
                "is missing (without it the stores' records look like another sweep's)",
                f"restore it from a copy, or run: {sweep_dir.repair_command()} (it takes the id back from the stores)",
            )
        )
    return found + _store_damage(sweep_dir, journal, db, thorough)


def _config_missing(sweep_dir: SweepDir) -> list[Damage]:
    """A folder holding a sweep's stores but no ``sweep.yaml`` lost it (the stores are created after it)."""
    stores_here = [name for name in (JOURNAL, MLFLOW_DB) if (sweep_dir / name).exists()]
    if not stores_here:
        return []
    return [
        Damage(
            sweep_dir / CONFIG,
            f"is missing beside the sweep's {' and '.join(stores_here)}",
            f"restore it from a copy, or run: {sweep_dir.repair_command()} (it rebuilds it from the copy MLflow keeps)",
        )
    ]


def _store_damage(sweep_dir: SweepDir, journal: Path | None, db: Path | None, thorough: bool) -> list[Damage]:
    """The local Optuna journal and MLflow SQLite file: missing where records exist, or damaged."""
    found = []
    if db is not None and not db.exists() and _has_records(sweep_dir, journal):
        problem = "is missing although the sweep has recorded trials (a new one would lose every run)"
        found.append(Damage(db, problem, "restore it from a copy; nothing was written"))
    elif db is not None and db.exists():
        problem = sqlite_problem(db, thorough)
        if problem is not None:
            found.append(Damage(db, problem, "restore it from a copy; nothing was written"))
    damaged = journal_damage(journal) if journal is not None and journal.exists() else None
    if damaged is not None:
        after = f"{damaged.records_after} record{'s' if damaged.records_after != 1 else ''} after it"
        found.append(
            Damage(
                journal,
                f"record damaged at byte {damaged.offset} (line {damaged.line}), {after}",
                f"run {sweep_dir.repair_command()} (it keeps a copy), or restore it from a copy",
            )
        )
    return found


def require_intact(sweep_dir: SweepDir, stores: Stores | None = None) -> None:
    """Raise ``SweepDamaged`` for the first damaged file; a command calls it before it reads or
    writes anything of an existing sweep."""
    found = inspect(sweep_dir, stores)
    if found:
        raise found[0].error()
