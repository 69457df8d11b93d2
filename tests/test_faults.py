"""Faults provoked for real: a torn Optuna journal, SIGTERM to the driver, a full disk, two drivers
racing for one sweep, an unexpected error in the driver. Real Ray, real Optuna journal, real
MLflow SQLite store, real processes, signals and mounts; no mocks.

Every sweep here is tiny (digits, 1 optimizer, 1-3 epochs, 1-3 trials). Drivers that must exit
with a code, or be signalled, run as ``python -m sweep.cli`` subprocesses connected to the test
session's Ray (``ray_address=``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep.core.config import load_config
from sweep.core.errors import ConfigError
from sweep.execution.launch import prepare, run_sweep, start
from sweep.stores.studies import counts_against_budget, open_storage, study_name
from sweep.stores.sweepdir import SweepDir
from tests.sweep_helpers import default_storage, default_tracking_uri, mlflow_runs, runs_per_trial, tiny_sweep

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SET_TRIAL_STATE_VALUES = 6  # optuna.storages.journal._storage.JournalOperation
FINISHED_STATES = {TrialState.COMPLETE.value, TrialState.PRUNED.value, TrialState.FAIL.value}
ORPHANED = "sweep.orphaned"


# ---- helpers ---------------------------------------------------------------------------------


def _base(out: Path, name: str, *extra: str) -> list[str]:
    return [f"output_dir={out}", *tiny_sweep(name, *extra)]  # every caller gives its trials=


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweep.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _popen(*args: str, log: Path) -> subprocess.Popen:
    """A driver in the background; its output goes to ``log``.out / ``log``.err."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen([sys.executable, "-m", "sweep.cli", *args], cwd=REPO, stdout=out, stderr=err)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _no_library_noise(stderr: str) -> None:
    for text in ("Traceback", "*** SIGTERM received", "Aborted", "Stack trace", "core dumped"):
        assert text not in stderr, stderr


def _trials(sweep_dir: Path, name: str, optimizer: str) -> list[optuna.trial.FrozenTrial]:
    """The study as its storage holds it now (read afresh: another process wrote it)."""
    storage_url = default_storage(sweep_dir)
    if not Path(storage_url[len("journal://") :]).exists():
        return []
    open_storage.cache_clear()
    try:
        study = optuna.load_study(study_name=study_name(name, optimizer), storage=open_storage(storage_url))
    except KeyError:  # not created yet
        return []
    return study.get_trials()


def _wait_for_running_epoch(
    proc: subprocess.Popen, sweep_dir: Path, name: str, optimizer: str, log: Path, timeout: float = 120
) -> optuna.trial.FrozenTrial:
    """Poll the journal until a trial is RUNNING with at least one epoch reported."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.with_suffix(".out").read_text() + log.with_suffix(".err").read_text()
        for t in _trials(sweep_dir, name, optimizer):
            if t.state == TrialState.RUNNING and t.intermediate_values:
                return t
        time.sleep(0.05)
    raise AssertionError("never saw a running trial with a reported epoch")


def _check_totals(sweep_dir: Path, name: str, optimizers: list[str], trials: int):
    """Exact totals in both stores: ``trials`` counted trials per optimizer, nothing RUNNING or
    WAITING, one MLflow run per Optuna trial (orphans set aside), each run agreeing with its trial."""
    all_trials = []
    for opt in optimizers:
        ts = _trials(sweep_dir, name, opt)
        assert sum(counts_against_budget(t) for t in ts) == trials, (
            opt,
            [(t.number, t.state.name, t.user_attrs.get("status")) for t in ts],
        )
        assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        all_trials += [(opt, t) for t in ts]
    _, parents, children = mlflow_runs(default_tracking_uri(sweep_dir), name)
    assert sorted(r.data.tags["sweep.optimizer"] for r in parents) == sorted(optimizers)
    kept = [r for r in children if ORPHANED not in r.data.tags]
    orphans = [r for r in children if ORPHANED in r.data.tags]
    counts = runs_per_trial(kept)
    assert set(counts) == {(opt, t.number) for opt, t in all_trials}, (counts, len(all_trials))
    assert set(counts.values()) == {1}
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
    runs = {(r.data.tags["sweep.optimizer"], int(r.data.tags["optuna.trial_number"])): r for r in kept}
    for opt, t in all_trials:
        run = runs[(opt, t.number)]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["optuna.state"] == t.state.name, (t.number, t.state, run.data.tags)
        assert run.data.tags["sweep.status"] == t.user_attrs["status"], (t.number, t.user_attrs, run.data.tags)
    return all_trials, runs, orphans


def _check_retried(all_trials, runs, numbers) -> None:
    """Each of ``numbers`` is finished as interrupted and was run again once, with its parameters."""
    by_number = {t.number: t for _, t in all_trials}
    retries = {t.user_attrs["retry_of"]: t for _, t in all_trials if "retry_of" in t.user_attrs}
    for number in numbers:
        trial = by_number[number]
        assert trial.state == TrialState.FAIL and trial.user_attrs["status"] == "interrupted"
        assert not counts_against_budget(trial)
        retry = retries[number]
        assert retry.params == trial.params and counts_against_budget(retry)
        run = runs[("sgd", number)]
        assert run.info.status == "KILLED" and run.data.tags["sweep.status"] == "interrupted"
        assert runs[("sgd", retry.number)].data.tags["sweep.retry_of"] == str(number)


# ---- 1. a torn last record in the Optuna journal ----------------------------------------------


def _tear(journal: Path, which: str) -> tuple[bytes, int, int]:
    """Cut a record of the journal in half: the last one, or the first trial's final ``tell``
    (then the complete records after it cannot be replayed either). Returns the damaged bytes,
    the trial whose state went with the cut record, and how many trials were created after it."""
    data = journal.read_bytes()
    lines = data.splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    tells = [
        i for i, r in enumerate(records) if r["op_code"] == SET_TRIAL_STATE_VALUES and r["state"] in FINISHED_STATES
    ]
    index = len(lines) - 1 if which == "last" else tells[0]
    cut = sum(len(line) for line in lines[:index]) + len(lines[index]) // 2
    os.truncate(journal, cut)
    created_after = sum(1 for r in records[index + 1 :] if r["op_code"] == 4)
    return data[:cut], records[index]["trial_id"], created_after


@pytest.mark.parametrize("which", ["last", "first_tell"])
def test_torn_journal_record_is_repaired_and_rerun(ray_address, tmp_path, which):
    out = tmp_path / "sweeps"
    name = f"torn-{which.replace('_', '-')}"
    base = _base(out, name, "trials=2")
    assert run_sweep(load_config("quickstart", base, mode="sweep")).rows
    sweep_dir = SweepDir.of(str(out), name).path
    journal = sweep_dir / "optuna.journal"
    records = [json.loads(line) for line in journal.read_bytes().splitlines()]
    damaged, lost, created_after = _tear(journal, which)
    open_storage.cache_clear()
    cut = records[
        len(records) - 1
        if which == "last"
        else min(i for i, r in enumerate(records) if r["op_code"] == SET_TRIAL_STATE_VALUES)
    ]
    assert cut["op_code"] == SET_TRIAL_STATE_VALUES and cut["state"] in FINISHED_STATES  # a final tell

    if which == "last":  # the same command again
        trials, result = 2, _cli("run", "quickstart", *base, f"ray_address={ray_address}")
    else:  # a resume that tops up
        trials, result = 3, _cli("resume", name, "--output-dir", str(out), "trials=3", f"ray_address={ray_address}")
    assert result.returncode == 0, result.stdout + result.stderr
    repaired = [line for line in result.stderr.splitlines() if line.startswith("repaired:")]
    assert len(repaired) == 1, result.stderr
    copies = list(sweep_dir.glob("optuna.journal.torn-*"))
    assert len(copies) == 1 and copies[0].name in repaired[0]
    assert copies[0].read_bytes() == damaged
    _no_library_noise(result.stderr)
    # the trial whose tell was lost came back RUNNING: recovery finished it as interrupted
    assert f"trial {lost} was interrupted" in result.stdout, result.stdout
    assert f"trial {lost} queued again" in result.stdout

    all_trials, runs, orphans = _check_totals(sweep_dir, name, ["sgd"], trials)
    _check_retried(all_trials, runs, [lost])
    # runs of trials the journal lost entirely are kept, tagged, and their numbers reused
    assert len(orphans) == created_after
    assert all(r.data.tags["sweep.reason"].startswith("its trial was lost") for r in orphans)
    assert SweepDir(sweep_dir).state() == "finished"


# ---- 2. SIGTERM to the driver -------------------------------------------------------------------


def test_sigterm_stops_the_driver_and_resume_finishes(ray_address, tmp_path):
    out = tmp_path / "sweeps"
    name = "sigterm"
    # 10 epochs: the victim must not finish while the driver stops (seen once with 4)
    args = _base(out, name, "trials=2", "epochs=10", "batch_size=8", f"ray_address={ray_address}")
    sweep_dir = SweepDir.of(str(out), name).path
    log = tmp_path / "driver"
    driver = _popen("run", "quickstart", *args, log=log)
    try:
        victim = _wait_for_running_epoch(driver, sweep_dir, name, "sgd", log)
        sent = time.monotonic()
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        _stop(driver)
    stderr = log.with_suffix(".err").read_text()
    assert code == 128 + signal.SIGTERM, (code, stderr)
    assert took < 20, took
    assert "stopped by SIGTERM" in stderr and f"continue with: sweep resume {name} --output-dir" in stderr
    _no_library_noise(stderr)
    assert (sweep_dir / "state").read_text().strip() == "interrupted"
    assert SweepDir(sweep_dir).state() == "interrupted"
    assert any(t.state == TrialState.RUNNING for t in _trials(sweep_dir, name, "sgd"))

    result = _cli("resume", name, "--output-dir", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    all_trials, runs, orphans = _check_totals(sweep_dir, name, ["sgd"], 2)
    assert not orphans
    _check_retried(all_trials, runs, [victim.number])
    print(f"SIGTERM -> exit {code} after {took:.1f} s; resume: {len(all_trials)} trials")


# ---- 3. a full disk is not a trial outcome -------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, unmounted afterwards whatever happens."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)  # this process still has the DB open


def _fill(path: Path) -> int:
    """Write ``path`` until the disk is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return written
    finally:
        os.close(fd)


def test_full_disk_stops_the_sweep_and_resume_finishes(ray_address, tmp_path, small_disk):
    out = small_disk / "sweeps"
    name = "full"
    args = _base(out, name, "trials=2", "epochs=3", "batch_size=8", f"ray_address={ray_address}")
    sweep_dir = SweepDir.of(str(out), name).path
    log = tmp_path / "driver"
    filler = small_disk / "filler"
    driver = _popen("run", "quickstart", *args, log=log)
    try:
        victim = _wait_for_running_epoch(driver, sweep_dir, name, "sgd", log)
        filled = _fill(filler)  # mid-trial: its next epoch's records find no room
        code = driver.wait(timeout=60)
    finally:
        _stop(driver)
    stderr = log.with_suffix(".err").read_text()
    assert code == 1, (code, stderr, log.with_suffix(".out").read_text())
    errors = [line for line in stderr.splitlines() if line.startswith("sweep: error:")]
    assert len(errors) == 1 and " unavailable: " in errors[0], stderr
    _no_library_noise(stderr)
    assert SweepDir(sweep_dir).state() == "interrupted"
    trials = _trials(sweep_dir, name, "sgd")
    assert not [t for t in trials if t.user_attrs.get("status") == "failed"], [t.user_attrs for t in trials]
    assert trials[victim.number].state != TrialState.WAITING

    # the journal's last append cut short, as a full disk does (cut by hand: where the disk runs
    # out inside a journal write cannot be chosen); setting it aside needs room for a copy
    journal = sweep_dir / "optuna.journal"
    damaged, _, _ = _tear(journal, "last")
    result = _cli("resume", name, "--output-dir", str(out))
    torn_error = _one_unavailable_line(result)
    assert "No space left" in torn_error
    assert journal.read_bytes() == damaged and not list(sweep_dir.glob("optuna.journal.torn-*"))

    filler.unlink()
    result = _cli("resume", name, "--output-dir", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("repaired:")]
    _check_totals(sweep_dir, name, ["sgd"], 2)

    # a top-up on a full disk: the driver's own first write (reopening the parent run) finds no room
    _fill(filler)
    result = _cli("resume", name, "--output-dir", str(out), "trials=3")
    top_up_error = _one_unavailable_line(result)
    assert not [t for t in _trials(sweep_dir, name, "sgd") if t.user_attrs.get("status") == "failed"]

    filler.unlink()
    result = _cli("resume", name, "--output-dir", str(out), "trials=3")
    assert result.returncode == 0, result.stdout + result.stderr
    all_trials, runs, orphans = _check_totals(sweep_dir, name, ["sgd"], 3)
    statuses = [t.user_attrs["status"] for _, t in all_trials]
    assert "failed" not in statuses, statuses
    assert sum(s in ("ok", "pruned", "diverged") for s in statuses) == 3
    print(
        f"disk full after {filled} filler bytes: {errors[0]}; torn journal on the full disk: {torn_error}; "
        f"top-up on the full disk: {top_up_error}; resume: {statuses}"
    )


def _one_unavailable_line(result: subprocess.CompletedProcess) -> str:
    """Exit 1 with one `sweep: error: ... unavailable: ...` line and no library traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sweep: error:")]
    assert len(errors) == 1 and " unavailable: " in errors[0], result.stderr
    _no_library_noise(result.stderr)
    return errors[0]


# ---- 4. two drivers racing for one sweep ----------------------------------------------------------


def test_driver_checked_before_another_ran_the_sweep_resumes_it(ray_address, tmp_path):
    out = tmp_path / "sweeps"
    a_cfg = load_config("quickstart", _base(out, "race", "trials=3"), mode="sweep")
    prepared = prepare(a_cfg)  # A: every check passed for a new sweep, nothing written
    sweep_dir = SweepDir.of(str(out), "race")
    assert prepared.seen_id is None and not sweep_dir.path.exists()

    assert run_sweep(load_config("quickstart", _base(out, "race", "trials=2"), mode="sweep")).rows  # B
    b_id = sweep_dir.read_id()
    assert b_id

    assert start(prepared).rows  # A goes on: B's sweep, topped up to A's 3 trials
    assert sweep_dir.read_id() == b_id
    _check_totals(sweep_dir.path, "race", ["sgd"], 3)
    open_storage.cache_clear()
    summaries = optuna.get_all_study_summaries(open_storage(default_storage(sweep_dir.path)))
    assert [s.study_name for s in summaries] == ["race/sgd"] and summaries[0].user_attrs["sweep_id"] == b_id
    from mlflow import MlflowClient

    experiments = MlflowClient(default_tracking_uri(sweep_dir.path)).search_experiments()
    assert [e.name for e in experiments if e.name != "Default"] == ["race"]

    assert run_sweep(load_config("quickstart", _base(out, "race", "trials=3"), mode="sweep")).rows
    assert sweep_dir.read_id() == b_id
    _check_totals(sweep_dir.path, "race", ["sgd"], 3)


def test_driver_checked_before_another_ran_a_different_sweep_is_refused(ray_address, tmp_path):
    out = tmp_path / "sweeps"
    prepared = prepare(load_config("quickstart", _base(out, "race2", "trials=1"), mode="sweep"))
    b_cfg = load_config("quickstart", _base(out, "race2", "trials=1", "epochs=2"), mode="sweep")
    assert run_sweep(b_cfg).rows
    sweep_dir = SweepDir.of(str(out), "race2")
    b_id, b_saved = sweep_dir.read_id(), sweep_dir.saved_config()

    with pytest.raises(ConfigError, match="epochs"):
        start(prepared)
    assert sweep_dir.read_id() == b_id and sweep_dir.saved_config() == b_saved
    assert sweep_dir.state() == "finished" and not sweep_dir.is_locked()

    assert run_sweep(b_cfg.replace(trials=2)).rows  # the sweep is not refused for good
    assert sweep_dir.read_id() == b_id
    _check_totals(sweep_dir.path, "race2", ["sgd"], 2)


HOLD = """
import sys
from sweep.stores.sweepdir import SweepDir
with SweepDir(sys.argv[1]).claim() as sweep_id:
    print(sweep_id, flush=True)
    sys.stdin.read()
"""


def _claim_in_another_process(path: Path, hold: bool) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().strip()
    if not hold:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    return proc, line


def test_a_claim_held_by_another_process_is_refused(ray_address, tmp_path):
    out = tmp_path / "sweeps"
    cfg = load_config("quickstart", _base(out, "held", "trials=1"), mode="sweep")
    sweep_dir = SweepDir.of(str(out), "held")
    prepared = prepare(cfg)
    holder, held_id = _claim_in_another_process(sweep_dir.path, hold=True)
    try:
        assert held_id and sweep_dir.is_locked()
        with SweepDir(sweep_dir.path).claim() as got:
            assert got is None
        with pytest.raises(ConfigError, match="being run by another driver"):
            prepare(cfg)
        with pytest.raises(ConfigError, match="just started by another driver"):
            start(prepared)
        assert sweep_dir.read_id() == held_id
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not sweep_dir.is_locked()
    with SweepDir(sweep_dir.path).claim() as got:
        assert got == held_id


def test_an_id_written_between_check_and_claim_is_kept(tmp_path):
    path = tmp_path / "sweeps" / "between"
    mine = SweepDir(path)
    assert mine.read_id() is None  # the check: a new sweep
    _, theirs = _claim_in_another_process(path, hold=False)  # another driver creates it meanwhile
    assert theirs and (path / "id").read_text() == theirs + "\n"
    with mine.claim() as got:
        assert got == theirs
    assert (path / "id").read_text() == theirs + "\n"


# ---- 5. an unexpected error in the driver -------------------------------------------------------


def test_unexpected_driver_error_is_logged_and_resume_finishes(ray_address, tmp_path):
    out = tmp_path / "sweeps"
    name = "unexpected"
    sweep_dir = SweepDir.of(str(out), name).path
    (sweep_dir / "summary.json").mkdir(parents=True)  # report.write cannot write its file
    result = _cli("run", "quickstart", *_base(out, name, "trials=1", f"ray_address={ray_address}"))
    assert result.returncode == 1, result.stdout + result.stderr
    log = sweep_dir / "driver.log"
    errors = [line for line in result.stderr.splitlines() if line.startswith("sweep: error:")]
    assert len(errors) == 1 and errors[0].startswith("sweep: error: unexpected IsADirectoryError"), result.stderr
    assert str(log) in result.stderr and "continue with: sweep resume" in result.stderr
    _no_library_noise(result.stderr)
    traceback = log.read_text()
    assert traceback.startswith("Traceback") and "IsADirectoryError" in traceback
    assert "write_summary" in traceback and "summary.json" in traceback
    assert (sweep_dir / "state").read_text().strip() == "interrupted"

    (sweep_dir / "summary.json").rmdir()
    result = _cli("resume", name, "--output-dir", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((sweep_dir / "summary.json").read_text())["optimizers"]["sgd"]["ok"] == 1
    _check_totals(sweep_dir, name, ["sgd"], 1)
    assert SweepDir(sweep_dir).state() == "finished"
