"""Torn journal tails, with real Optuna JournalStorage files in tmp_path (no Ray, no mocks).

Why this matters, shown in ``test_torn_tail_without_repair_loses_the_study``: Optuna skips a torn
last line when it reads, but its next append lands on that line, and from the append after that
on, the whole journal no longer loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep.stores.journal import TornTail, find_torn_tail, set_aside

STUDY = "adam"
VALUES = [0.25, 0.5, 0.75]


def _storage(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def _load(path: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=_storage(path))


def _study_with_trials(path: Path, lost_value: float | None = None) -> bytes:
    """A study with three finished trials; with ``lost_value``, a fourth told that value last."""
    study = optuna.create_study(study_name=STUDY, storage=_storage(path), direction="maximize")
    for value in VALUES:
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        study.tell(trial, value)
    if lost_value is not None:
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        study.tell(trial, lost_value)
    return path.read_bytes()


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _torn_journal(tmp_path: Path, name: str = "optuna.journal") -> tuple[Path, bytes, int]:
    """Four trials, the fourth's tell record cut in half (as by a full disk or a power cut)."""
    path = tmp_path / name
    data = _study_with_trials(path, lost_value=0.9)
    last = _lines(data)[-1]
    assert json.loads(last)["op_code"] == 6 and json.loads(last)["state"] == TrialState.COMPLETE
    cut = len(last) // 2
    path.write_bytes(data[:-cut])
    return path, data[:-cut], len(data) - len(last)


def _check_repaired(path: Path) -> None:
    """Three trials COMPLETE with their values, the fourth RUNNING (its tell was lost)."""
    trials = _load(path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING]
    assert [t.value for t in trials[:3]] == VALUES
    assert "lr" in trials[3].params  # the records before the lost one all replayed


def test_healthy_journal_is_not_torn(tmp_path):
    path = tmp_path / "optuna.journal"
    _study_with_trials(path)
    assert find_torn_tail(path) is None
    assert [t.state for t in _load(path).trials] == [TrialState.COMPLETE] * 3


def test_missing_or_empty_journal_is_not_torn(tmp_path):
    assert find_torn_tail(tmp_path / "optuna.journal") is None
    assert not (tmp_path / "optuna.journal").exists()  # read-only: creates nothing
    (tmp_path / "optuna.journal").write_bytes(b"")
    assert find_torn_tail(tmp_path / "optuna.journal") is None


def test_torn_tail_without_repair_loses_the_study(tmp_path):
    """What Optuna 5.0 does on its own: tolerates the torn line until two appends follow it."""
    path, torn_bytes, _ = _torn_journal(tmp_path)

    # Reading skips the torn last line silently: the study opens, trial 3 RUNNING (tell lost).
    study = _load(path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING]

    # The next append is glued onto the torn line; the merged line does not parse, and being
    # last it is skipped too, so the new trial never appears (Optuna's own bookkeeping breaks).
    with pytest.raises(AttributeError, match="_last_created_trial_id_by_this_process"):
        study.ask()
    glued = _lines(path.read_bytes())[-1]
    assert glued.startswith(_lines(torn_bytes)[-1]) and b'"op_code":4' in glued
    assert len(_load(path).trials) == 4

    # Any further append puts a record after the glued line, and from then on nothing loads:
    # the append itself fails when it reads back, and so does every later start.
    size = path.stat().st_size
    with pytest.raises(json.JSONDecodeError):
        study.set_user_attr("resumed", True)
    assert path.stat().st_size > size  # the record was written before the read-back failed
    with pytest.raises(json.JSONDecodeError):
        _load(path)
    with pytest.raises(json.JSONDecodeError):
        optuna.create_study(study_name=STUDY, storage=_storage(path), load_if_exists=True)


def test_torn_tail_is_set_aside_and_the_study_resumes(tmp_path):
    path, torn_bytes, valid = _torn_journal(tmp_path)

    torn = find_torn_tail(path)
    assert torn == TornTail(path=path, valid_bytes=valid, dropped_bytes=len(torn_bytes) - valid, dropped_lines=1)
    assert path.read_bytes() == torn_bytes  # finding changes nothing
    assert torn.describe().startswith(
        f"optuna.journal: the last record was cut off ({len(torn_bytes) - valid} bytes, 1 record)"
    )

    copy = set_aside(torn)
    assert copy.parent == path.parent and copy.name.startswith("optuna.journal.torn-")
    assert copy.read_bytes() == torn_bytes
    assert path.read_bytes() == torn_bytes[:valid]
    assert find_torn_tail(path) is None

    # The three finished trials survive; the fourth is RUNNING, so the engine's recovery (fail a
    # dead driver's RUNNING trials as interrupted, queue them again) re-runs it.
    _check_repaired(path)

    # The journal takes new records and reads them back, in a fresh storage too.
    study = _load(path)
    trial = study.ask()
    study.tell(trial, 0.95)
    study.set_user_attr("resumed", True)
    reloaded = _load(path)
    assert [t.state for t in reloaded.trials][-1] == TrialState.COMPLETE
    assert reloaded.trials[-1].value == 0.95 and reloaded.user_attrs == {"resumed": True}
    assert find_torn_tail(path) is None


def test_last_record_without_newline_is_torn(tmp_path):
    """Complete JSON but no newline: Optuna skips it and would glue the next record onto it."""
    path = tmp_path / "optuna.journal"
    data = _study_with_trials(path, lost_value=0.9)
    last = _lines(data)[-1]
    path.write_bytes(data[:-1])
    json.loads(last)  # the record itself is whole

    torn = find_torn_tail(path)
    assert torn is not None
    assert (torn.valid_bytes, torn.dropped_bytes, torn.dropped_lines) == (len(data) - len(last), len(last) - 1, 1)
    assert _load(path).trials[3].state == TrialState.RUNNING  # Optuna ignores it as well

    set_aside(torn)
    _check_repaired(path)


def test_damaged_record_in_the_middle_sets_aside_everything_after_it(tmp_path):
    """A torn record with later records after it (the state an unrepaired resume leaves)."""
    path = tmp_path / "optuna.journal"
    data = _study_with_trials(path, lost_value=0.9)
    lines = _lines(data)
    # The fourth trial's tell is torn; then a new driver appended a study attribute and a trial
    # (the first glued onto the torn line, as Optuna does, the second on a line of its own).
    later = [
        json.dumps(
            {"op_code": 2, "worker_id": "w", "study_id": 0, "user_attr": {"a": 1}}, separators=(",", ":")
        ).encode()
        + b"\n",
        json.dumps(
            {"op_code": 4, "worker_id": "w", "study_id": 0, "datetime_start": "2025-01-01T00:00:00.000000+00:00"},
            separators=(",", ":"),
        ).encode()
        + b"\n",
    ]
    torn_line = lines[-1][: len(lines[-1]) // 2]
    damaged = b"".join(lines[:-1]) + torn_line + b"".join(later)
    path.write_bytes(damaged)
    with pytest.raises(json.JSONDecodeError):
        _load(path)  # Optuna cannot load it at all

    torn = find_torn_tail(path)
    valid = len(b"".join(lines[:-1]))
    assert torn == TornTail(path=path, valid_bytes=valid, dropped_bytes=len(damaged) - valid, dropped_lines=2)
    assert "the 1 record after it cannot be replayed" in torn.describe()

    copy = set_aside(torn)
    assert copy.read_bytes() == damaged
    _check_repaired(path)
    assert _load(path).user_attrs == {}  # the later, complete records were set aside too


def test_garbage_line_with_newline_in_the_middle(tmp_path):
    """A whole line that is not an Optuna record (not JSON, or JSON without an op code)."""
    path = tmp_path / "optuna.journal"
    data = _study_with_trials(path)
    lines = _lines(data)
    for bad in (b"\x00\x00\x00\n", b"[1, 2]\n", b'{"worker_id":"w"}\n', b"\n"):
        path.write_bytes(b"".join(lines[:2]) + bad + b"".join(lines[2:]))
        torn = find_torn_tail(path)
        assert torn is not None and torn.valid_bytes == len(lines[0]) + len(lines[1])
        assert torn.dropped_lines == len(lines) - 1


def test_set_aside_twice_in_the_same_second_keeps_both_copies(tmp_path):
    path, torn_bytes, valid = _torn_journal(tmp_path)
    first = set_aside(find_torn_tail(path))

    # Tear it again at once (another half record after the repaired prefix).
    second_bytes = torn_bytes[:valid] + b'{"op_code":6,"worker_id":"w","tri'
    path.write_bytes(second_bytes)
    second = set_aside(find_torn_tail(path))
    third_bytes = torn_bytes[:valid] + b'{"op_code":'
    path.write_bytes(third_bytes)
    third = set_aside(find_torn_tail(path))

    assert len({first, second, third}) == 3
    assert all(p.name.startswith("optuna.journal.torn-") for p in (first, second, third))
    assert first.read_bytes() == torn_bytes
    assert second.read_bytes() == second_bytes
    assert third.read_bytes() == third_bytes
    _check_repaired(path)


def test_set_aside_refuses_a_journal_that_changed_since(tmp_path):
    """A journal that grew after the check has a writer: its tail may be a record in progress."""
    path, torn_bytes, _ = _torn_journal(tmp_path)
    torn = find_torn_tail(path)
    with open(path, "ab") as f:
        f.write(b"more\n")
    with pytest.raises(RuntimeError, match="another process"):
        set_aside(torn)
    assert path.read_bytes() == torn_bytes + b"more\n"
    assert not list(tmp_path.glob("*.torn-*"))


def test_large_journal_is_scanned_quickly(tmp_path):
    """Linear in the journal's size: ~20 MB of records in well under the suite's budget."""
    import time

    path = tmp_path / "optuna.journal"
    record = (
        json.dumps(
            {"op_code": 7, "worker_id": "w" * 60, "trial_id": 1, "step": 0, "intermediate_value": 0.5},
            separators=(",", ":"),
        ).encode()
        + b"\n"
    )
    n = (20 << 20) // len(record)
    path.write_bytes(record * n + record[:40])
    start = time.perf_counter()
    torn = find_torn_tail(path)
    elapsed = time.perf_counter() - start
    assert torn == TornTail(path=path, valid_bytes=len(record) * n, dropped_bytes=40, dropped_lines=1)
    assert elapsed < 10, elapsed
