"""An unwritable HOME (``HOME=/proc sweep run ...``): Ray, MLflow and matplotlib get a temporary
one, said in one line, and the sweep runs; and a sweep that stopped before anything of it was
saved is never told to ``sweep resume``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep import cli
from sweep.core import home
from sweep.core.config import SWEEP, load_config
from sweep.stores.sweepdir import SweepDir

REPO = Path(__file__).resolve().parent.parent
UNWRITABLE = "/proc"  # no one can make a folder there, root included (chmod would not stop root)


def test_an_unwritable_home_is_stood_in_for_and_a_writable_one_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home.ensure_writable() is None and os.environ["HOME"] == str(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe is gone
    monkeypatch.setenv("HOME", UNWRITABLE)
    said = home.ensure_writable()
    stand_in = Path(os.environ["HOME"])
    try:
        assert said == (
            f"HOME ({UNWRITABLE}) cannot be written; Ray, MLflow and matplotlib keep their files in "
            f"{stand_in} for this command (removed at its end)"
        )
        assert stand_in != Path(UNWRITABLE) and home.writable(stand_in) and not home.writable(Path(UNWRITABLE))
    finally:
        shutil.rmtree(stand_in)


def _drive_failing(tmp_path, capsys, error: BaseException) -> tuple[int, str]:
    cfg = load_config("quickstart", [f"output_dir={tmp_path / 'out'}", "optimizers=[sgd]"], mode=SWEEP)

    def start():
        raise error

    code = cli._drive(cfg, start)
    return code, capsys.readouterr().err


def test_a_sweep_that_saved_nothing_is_not_told_to_resume(tmp_path, capsys):
    code, err = _drive_failing(tmp_path, capsys, FileNotFoundError(2, "No such file or directory", "/proc/.ray"))
    assert code == 1 and "resume" not in err, err
    assert err.strip().splitlines()[-1] == (
        "no sweep directory was written; nothing of the sweep was saved; run the same command again "
        "(once the cause is fixed)"
    )
    code, err = _drive_failing(tmp_path, capsys, KeyboardInterrupt())
    assert code == 130 and "resume" not in err and "nothing of the sweep was saved" in err, err
    assert not (tmp_path / "out").exists()


def test_a_saved_sweep_that_stopped_is_told_to_resume(tmp_path, capsys):
    folder = SweepDir.of(str(tmp_path / "out"), "quickstart")
    folder.path.mkdir(parents=True)
    folder.write_config({"name": "quickstart"})
    code, err = _drive_failing(tmp_path, capsys, KeyboardInterrupt())
    assert code == 130 and f"continue with: sweep resume quickstart --output-dir {tmp_path / 'out'}" in err, err


@pytest.mark.slow
def test_a_sweep_runs_with_home_unwritable(tmp_path):
    """The real CLI, as the issue ran it: it said "unexpected FileNotFoundError: '/proc/.ray'"
    and "no sweep directory was written; continue with: sweep resume ...", exit 1."""
    out = tmp_path / "out"
    overrides = ["optimizers=[sgd]", "trials=1", "epochs=1", "batch_size=64", "reeval_seeds=0", "report_figures=false"]
    env = {**os.environ, "HOME": UNWRITABLE, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "sweep.cli", "run", "quickstart", *overrides, "--output-dir", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if UNWRITABLE in line]
    assert len(notes) == 1 and notes[0].startswith(f"sweep: HOME ({UNWRITABLE}) cannot be written;"), done.stderr
    assert "Traceback" not in done.stderr and "matplotlib" not in done.stderr.replace(notes[0], "")
    stand_in = Path(notes[0].split(" keep their files in ")[1].split(" for this command")[0])
    assert not stand_in.exists()  # removed at the end
    assert SweepDir.of(str(out), "quickstart").read_state() == "finished"
