"""Detect and set aside a torn tail of an Optuna journal file before Optuna opens it.

Optuna's ``JournalFileBackend`` (5.0) appends each operation as one compact JSON object per line,
``{"op_code": <int>, "worker_id": ..., ...}\\n``, under a ``<journal>.lock`` symlink. When it
reads, it silently skips a last line that lacks its ``\\n`` or does not parse (it takes it for a
record another process is still writing), but the next append goes straight after that line: the
new record is glued onto the torn one, the merged line no longer parses, and as soon as anything
follows it every read raises ``JSONDecodeError``: the study, and every finished trial in it, is
gone to Optuna. Cutting the journal back to its last complete record, after keeping a copy of
the whole file, turns that into the loss of the one operation that was being written.

Call these only while no other process can append to the journal (the driver holds the sweep
lock and has not started workers yet): a record being written at this moment by a live process
looks exactly like a torn one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

OP_CODE = "op_code"  # the key every record Optuna's JournalStorage writes starts with
COPY_TAG = ".torn-"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class TornTail:
    """A journal whose complete records end at ``valid_bytes``; the rest cannot be replayed."""

    path: Path  # the journal
    valid_bytes: int  # length of the longest prefix made of complete, parseable records
    dropped_bytes: int
    dropped_lines: int  # lines (complete or not) after that prefix

    def describe(self) -> str:
        """One line for the terminal: what is damaged, how much, and what is intact."""
        size = f"{self.dropped_bytes} byte{'s' if self.dropped_bytes != 1 else ''}"
        if self.dropped_lines <= 1:
            what = f"the last record was cut off ({size}, 1 record)"
        else:
            later = self.dropped_lines - 1
            records = f"record{'s' if later != 1 else ''}"
            what = (
                f"a record is damaged and the {later} {records} after it cannot be replayed "
                f"({size}, {self.dropped_lines} records)"
            )
        return f"{self.path.name}: {what}; the {self.valid_bytes} bytes before it are intact, the rest is set aside"


def _is_record(line: bytes) -> bool:
    """A complete record: ends with a newline and parses as the JSON object Optuna writes."""
    if not line.endswith(b"\n"):
        return False  # Optuna would append the next record onto this line
    try:
        obj = json.loads(line)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError on non-UTF-8 bytes
        return False
    if not isinstance(obj, dict):
        return False
    op = obj.get(OP_CODE)
    return isinstance(op, int) and not isinstance(op, bool) and op >= 0


def find_torn_tail(path: Path) -> TornTail | None:
    """Read-only: None if the file is missing or every line is a complete, parseable record.

    One linear pass in binary. The valid prefix ends at the first line that is not a complete
    record, and everything from there on counts as dropped, complete lines included: Optuna
    replays records in order and a later one may refer to what the lost one created (a trial, a
    study), so replaying it without its predecessor would be wrong or crash the replay.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        valid = 0
        for line in f:  # buffered: splits on b"\n" only, the last piece may lack it
            if not _is_record(line):
                break
            valid += len(line)
        else:
            return None
        # Count the dropped lines from the rest without parsing it.
        dropped_bytes = len(line)
        newlines = line.count(b"\n")
        last = line
        while chunk := f.read(_CHUNK):
            dropped_bytes += len(chunk)
            newlines += chunk.count(b"\n")
            last = chunk
    dropped_lines = newlines + (0 if last.endswith(b"\n") else 1)
    return TornTail(path=path, valid_bytes=valid, dropped_bytes=dropped_bytes, dropped_lines=dropped_lines)


def _fsync_dir(directory: Path) -> None:
    """Make a new or changed directory entry (the copy's name) survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_copy(journal: Path) -> tuple[Path, int]:
    """Create ``<name>.torn-<UTC stamp>`` exclusively, never replacing an earlier copy."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = journal.with_name(f"{journal.name}{COPY_TAG}{stamp}")
    n = 1
    while True:
        copy = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            return copy, os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            n += 1


def set_aside(torn: TornTail) -> Path:
    """Copy the whole journal to `<name>.torn-<UTC YYYYmmddTHHMMSSZ>` next to it (never overwrite
    an existing copy: a second one that second gets `-2`, and so on), fsync it, then truncate the
    journal to `valid_bytes` (fsync). Returns the copy's path.

    The copy is durable before the journal shrinks, so a crash in between loses nothing. Raises
    RuntimeError, changing nothing, if the journal's size is no longer the one ``torn`` was found
    with (another process appended since): its tail may then be a record still being written.
    """
    journal = torn.path
    expected = torn.valid_bytes + torn.dropped_bytes
    with open(journal, "r+b") as src:
        size = os.fstat(src.fileno()).st_size
        if size != expected:
            raise RuntimeError(
                f"{journal} is {size} bytes, not the {expected} it was checked at; another process is writing it"
            )
        copy, fd = _create_copy(journal)
        try:
            with os.fdopen(fd, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        except BaseException:
            copy.unlink(missing_ok=True)
            raise
        _fsync_dir(journal.parent)
        src.truncate(torn.valid_bytes)
        src.flush()
        os.fsync(src.fileno())
    return copy
