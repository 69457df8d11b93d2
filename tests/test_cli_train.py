"""`sweep train` as a user runs it: a real subprocess per command, in an empty working directory.

Each subprocess imports torch (~2 s), so they all run, two at a time, in a module fixture and
the tests only inspect their results. One of them trains, and together they take several seconds
on two cores: the whole module is slow.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from models import MODELS
from optim import OPTIMIZERS, SCHEDULES
from sweep.core.datasets import DATASETS

pytestmark = pytest.mark.slow

OK_ARGS = ["epochs=2", "optimizer=adam", "train_subset=200"]

# (overrides, key the message must name, what else it must say: the valid choices or the bound)
BAD = {
    "optimizer": (["optimizer=bogus"], "optimizer", sorted(OPTIMIZERS)),
    "model": (["model=bogus"], "model", sorted(MODELS)),
    "dataset": (["dataset=bogus"], "dataset", sorted(DATASETS)),
    "schedule": (["schedule=bogus"], "schedule", sorted(SCHEDULES)),
    "config_key": (["bogus=1"], "bogus", ["epochs", "optimizer", "schedule", "seed"]),
    "epochs_text": (["epochs=abc"], "epochs", ["integer", "abc"]),
    "epochs_zero": (["epochs=0"], "epochs", ["integer", "got 0"]),
    "lr_negative": (["optimizer.lr=-1"], "optimizer.lr", ["> 0", "-1"]),
    "momentum_2": (["optimizer.momentum=2"], "optimizer.momentum", ["[0, 1)", "got 2"]),
    "val_fraction_tiny": (["val_fraction=0.0001"], "val_fraction", ["no validation images"]),
    "train_subset_zero": (["train_subset=0"], "train_subset", [">= 1", "got 0"]),
    "batch_sizes": (["batch_sizes=[32,64]"], "batch_sizes", ["batch_size=N", "sweep run"]),
}
if not torch.cuda.is_available():
    BAD["device_cuda"] = (["device=cuda"], "device", ["no CUDA device"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run every command in its own empty directory, two at a time; collect (rc, out, err, dir)."""

    def run(case, args):
        cwd = tmp_path_factory.mktemp(f"cli_{case}")
        proc = subprocess.run(
            [sys.executable, "-m", "sweep.cli", "train", *args], cwd=cwd, capture_output=True, text=True, timeout=120
        )
        return case, (proc.returncode, proc.stdout, proc.stderr, cwd)

    commands = [("ok", OK_ARGS)] + [(case, spec[0]) for case, spec in BAD.items()]
    with ThreadPoolExecutor(max_workers=2) as pool:  # more than the 2 cores only adds contention
        return dict(pool.map(lambda c: run(*c), commands))


def test_train_prints_one_line_per_epoch(runs):
    rc, out, err, cwd = runs["ok"]
    assert rc == 0, err
    lines = out.strip().splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert len(epoch_lines) == 2, out
    assert epoch_lines[0].startswith("epoch   1/2") and epoch_lines[1].startswith("epoch   2/2")
    assert "adam" in lines[0] and "(200 train / " in lines[0]  # train_subset reached the data
    assert lines[-1].startswith("status ok") and "test acc" in lines[-1]
    assert list(Path(cwd).iterdir()) == []


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_exits_2_with_one_line(runs, case):
    _, key, listed = BAD[case]
    rc, out, err, cwd = runs[case]
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    message = lines[0]
    assert message.startswith(f"sweep: error: {key}: "), message
    for word in listed:
        assert word in message, f"{word!r} not listed in: {message}"
    assert "Traceback" not in err
    assert not out.strip().startswith("epoch")
    assert list(Path(cwd).iterdir()) == [], "a rejected command wrote to the working directory"
