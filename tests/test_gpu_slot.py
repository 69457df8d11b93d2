"""A GPU slot keeps one worker process across trials, and its memory does not grow.

Ray's default for a task that asks for a GPU is a fresh worker process per call (max_calls=1):
each trial would pay the imports, a CUDA context and the data's transfer again. The sweep asks
for reuse (``max_calls=0``). This runs a real sweep in its own Ray, whose one GPU is declared
(``num_gpus=1``): on this CPU machine it tests the scheduling and the reuse; on a machine with
CUDA, where the trials then train on the GPU, it runs 20 trials and checks the memory left
allocated after each (``cuda_allocated_after_mb``: the data's device copy, nothing else) is flat.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    import ray, torch
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    from sweep.config import load_config
    from sweep.engine import run_sweep
    from tests.sweep_helpers import default_storage, studies, sweep_dir_of
    trials = 20 if torch.cuda.is_available() else 4
    cfg = load_config("quickstart", [f"output_dir={sys.argv[1]}", "optimizers=[sgd]", f"trials={trials}", "epochs=1",
                                     "workers=1", "num_gpus=1", "pruner=none", "reeval_seeds=0",
                                     "report_figures=false", "checkpoint_every=0"], mode="sweep")
    run_sweep(cfg)
    study = studies(cfg, default_storage(sweep_dir_of(cfg)))["sgd"]
    print(json.dumps([{"worker": t.user_attrs.get("worker"), "state": t.state.name,
                       "after_mb": t.user_attrs.get("final_cuda_allocated_after_mb"),
                       "peak_mb": t.user_attrs.get("final_cuda_peak_mb")} for t in study.trials]))
""")


def test_one_worker_process_runs_every_trial_of_a_gpu_slot(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=280, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    trials = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(trials) >= 4 and all(t["state"] == "COMPLETE" for t in trials), trials
    assert len({t["worker"] for t in trials}) == 1, [t["worker"] for t in trials]  # one process for all
    after = [t["after_mb"] for t in trials]
    if after[0] is None:  # no CUDA here: nothing was allocated on a GPU
        assert all(a is None for a in after)
        return
    assert max(after) - min(after) < 1.0, after  # MB: the data's copy stays, nothing accumulates
    assert max(t["peak_mb"] for t in trials) < 2 * min(t["peak_mb"] for t in trials)
