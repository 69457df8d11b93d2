"""Shared fixtures: one real local Ray for the whole test session (it takes seconds to start)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def ray_address():
    """Start Ray once; sweeps run in-process reuse it, drivers in subprocesses connect to it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def sweep_overrides(tmp_path):
    """A shrunken quick-start sweep writing under tmp_path."""
    return [f"output_dir={tmp_path / 'sweeps'}", "epochs=2", "batch_size=64"]
