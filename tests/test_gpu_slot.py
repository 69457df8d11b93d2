"""A GPU slot keeps one worker process across trials, and its memory does not grow.

Ray's default for a task that asks for a GPU is a fresh worker process per call (max_calls=1):
each trial would pay the imports, a CUDA context and the data's transfer again. The sweep asks
for reuse (``max_calls=0``). This runs a real sweep on the session's Ray, which declares one GPU
(tests/conftest.py): on a CPU machine it tests the scheduling and the reuse (the trials train on
the CPU); on a machine with CUDA, where they train on the GPU, it runs 20 trials and checks that
the memory left allocated after each (``cuda_allocated_after_mb``: the data's device copy,
nothing else) is flat.
"""

from __future__ import annotations

import pytest
import torch

from sweep.core.config import load_config
from sweep.execution.launch import run_sweep
from tests.sweep_helpers import default_storage, studies, sweep_dir_of

pytestmark = pytest.mark.slow


def test_one_worker_process_runs_every_trial_of_a_gpu_slot(ray_address, tmp_path):
    trials = 20 if torch.cuda.is_available() else 3
    cfg = load_config(
        "quickstart",
        [
            f"output_dir={tmp_path / 'out'}",
            "optimizers=[sgd]",
            f"trials={trials}",
            "epochs=1",
            "workers=1",
            "num_gpus=1",
            "pruner=none",
            "reeval_seeds=0",
            "report_figures=false",
            "checkpoint_every=0",
        ],
        mode="sweep",
    )
    run_sweep(cfg)
    records = studies(cfg, default_storage(sweep_dir_of(cfg)))["sgd"].trials
    assert len(records) == trials and all(t.state.name == "COMPLETE" for t in records)
    assert len({t.user_attrs["worker"] for t in records}) == 1, [t.user_attrs["worker"] for t in records]
    after = [t.user_attrs.get("final_cuda_allocated_after_mb") for t in records]
    if not torch.cuda.is_available():  # nothing was allocated on a GPU
        assert after == [None] * trials
        return
    assert max(after) - min(after) < 1.0, after  # MB: the data's copy stays, nothing accumulates
    peaks = [t.user_attrs["final_cuda_peak_mb"] for t in records]
    assert max(peaks) < 2 * min(peaks), peaks
