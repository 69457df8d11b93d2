"""A damaged sweep directory, met by every command: one line naming the file, what is wrong and
the way back, exit 2, and not one byte of the sweep written (``sweep/stores/damage.py``).

The damage is what a bad copy, a sync tool, a disk error or an editor leaves, made for real on a
copy of a real finished sweep (real Ray, Optuna journal, MLflow SQLite store); the commands run
in-process through the CLI's ``main``.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweep.cli import main
from sweep.core.config import load_config
from sweep.execution.launch import run_sweep
from sweep.stores.damage import inspect, journal_damage, sqlite_problem
from sweep.stores.sweepdir import SweepDir
from tests.sweep_helpers import mark_damaged_on_purpose, tiny_sweep

NAME = "base"
SWEEP_KEYS = tiny_sweep(NAME)


def _truncate_half(path: Path) -> None:
    for side in ("-wal", "-shm"):  # what a copy of the main file alone leaves
        path.with_name(path.name + side).unlink(missing_ok=True)
    with open(path, "r+b") as db:
        db.truncate(path.stat().st_size // 2)


def _delete_db(path: Path) -> None:
    for side in ("", "-wal", "-shm"):
        path.with_name(path.name + side).unlink(missing_ok=True)


def _damage_middle(path: Path) -> None:
    """Bytes overwritten inside a record half way through, records after it intact."""
    data = bytearray(path.read_bytes())
    middle = data.index(b"\n", len(data) // 2) + 5
    data[middle : middle + 4] = b"\xff\xfe\x00{"
    path.write_bytes(bytes(data))


@dataclass(frozen=True)
class Case:
    file: str  # the file damaged, in the sweep's folder
    damage: Callable[[Path], None]
    says: str  # in the one line, after the file's path


CASES = {
    "mlflow.db cut in half": Case("mlflow.db", _truncate_half, ": is cut short ("),
    "mlflow.db deleted": Case("mlflow.db", _delete_db, ": is missing although the sweep has recorded trials"),
    "sweep.yaml binary": Case("sweep.yaml", lambda p: p.write_bytes(bytes(range(256)) * 3), ": unreadable ("),
    "sweep.yaml not YAML": Case("sweep.yaml", lambda p: p.write_text("optimizers: [sgd\n"), ": unreadable (line "),
    "sweep.yaml a list": Case(
        "sweep.yaml", lambda p: p.write_text("- sgd\n- adam\n"), ": unreadable (must hold a mapping"
    ),
    "sweep.yaml a string": Case(
        "sweep.yaml", lambda p: p.write_text("just some words\n"), ": unreadable (must hold a mapping"
    ),
    "sweep.yaml empty": Case("sweep.yaml", lambda p: p.write_text(""), ": unreadable (is empty)"),
    "id deleted": Case("id", lambda p: p.unlink(), ": is missing (without it the stores' records"),
    "journal damaged in the middle": Case("optuna.journal", _damage_middle, ": record damaged at byte "),
}

COMMANDS = {
    "run": lambda out: ["run", "quickstart", f"output_dir={out}", *SWEEP_KEYS],
    "resume": lambda out: ["resume", NAME, "--output-dir", str(out)],
    "report": lambda out: ["report", NAME, "--output-dir", str(out)],
    "ui": lambda out: ["ui", NAME, "--output-dir", str(out), "--port", "1"],
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_sweep(ray_address, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("healthy")
    run_sweep(load_config("quickstart", [f"output_dir={out}", *SWEEP_KEYS], mode="sweep"))
    return out / NAME


@pytest.fixture
def damaged(finished_sweep, tmp_path, request) -> tuple[Path, Case]:
    """A copy of the finished sweep with one file damaged, and a healthy sweep beside it."""
    case = CASES[request.param]
    out = tmp_path / "sweeps"
    shutil.copytree(finished_sweep, out / NAME)
    shutil.copytree(finished_sweep, out / "healthy")
    mark_damaged_on_purpose(tmp_path)  # the suite's closing `sweep check` passes it by
    case.damage(out / NAME / case.file)
    return out, case


@pytest.mark.slow  # builds one real sweep for the module (about 10 s); each case is then milliseconds
@pytest.mark.parametrize("damaged", list(CASES), indirect=True)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_meets_a_damaged_sweep_with_one_line_and_writes_nothing(damaged, command, capsys):
    out, case = damaged
    before = snapshot(out)
    code = main(COMMANDS[command](out))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert f"{out / NAME / case.file}{case.says}" in err, err
    assert "restore it" in err or "--repair" in err, err  # the way back
    assert "Traceback" not in err and "continue with" not in err
    assert snapshot(out) == before  # not one byte written, not one file created


@pytest.mark.slow
@pytest.mark.parametrize("damaged", list(CASES), indirect=True)
def test_ls_marks_the_damaged_sweep_and_lists_the_healthy_one(damaged, capsys):
    out, case = damaged
    before = snapshot(out)
    assert main(["ls", "--output-dir", str(out)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[NAME].split()[1] == "damaged" and f"{case.file}{case.says}" in rows[NAME], rows
    assert rows["healthy"].split()[1] == "finished" and "sgd: 0." in rows["healthy"], rows
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_healthy_sweep_has_no_damage(finished_sweep):
    assert inspect(SweepDir(finished_sweep)) == []


# ---- the checks on hand-made files (quick) ----


def _sqlite(path: Path, rows: int) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("create table t (x text)")
        db.executemany("insert into t values (?)", [("x" * 200,)] * rows)
    db.close()
    return path


def test_sqlite_checks_name_each_kind_of_damage(tmp_path):
    db = _sqlite(tmp_path / "a.db", 200)
    assert sqlite_problem(db) is None
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2)
    assert sqlite_problem(db, thorough=False) == f"is cut short ({size // 2} of its {size} bytes)"
    db.write_bytes(b"")
    assert sqlite_problem(db) == "is empty"
    db.write_bytes(b"not a database at all" * 10)
    assert sqlite_problem(db) == "is not an SQLite database"
    broken = _sqlite(tmp_path / "b.db", 200)
    data = bytearray(broken.read_bytes())
    data[4096 + 8 : 4096 + 64] = b"\xff" * 56  # a page's header overwritten, the size untouched
    broken.write_bytes(bytes(data))
    assert sqlite_problem(broken, thorough=False) is None  # only reading the pages finds it
    assert sqlite_problem(broken).startswith("is damaged (")


def test_a_journal_record_damaged_in_the_middle_is_named_by_offset_and_a_torn_tail_is_not(tmp_path):
    records = [b'{"op_code": 0, "worker_id": "w", "study_name": "s%d"}\n' % i for i in range(6)]
    journal = tmp_path / "optuna.journal"
    journal.write_bytes(b"".join(records))
    assert journal_damage(journal) is None
    journal.write_bytes(b"".join(records) + records[0][:10])  # a torn last record: the driver's to set aside
    assert journal_damage(journal) is None
    damaged = b"".join(records[:2]) + b"\xff" + records[2][1:] + b"".join(records[3:])
    journal.write_bytes(damaged)
    found = journal_damage(journal)
    assert (found.offset, found.line, found.records_after) == (len(records[0]) * 2, 3, 3)
