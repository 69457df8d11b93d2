"""Shared fixtures (one real local Ray, one copy of each dataset) and the service rule for markers.

Markers (declared in pyproject.toml, ``--strict-markers``):
  slow      starts Ray, a sweep, a server, or trains for more than about a second;
            ``pytest -m "not slow"`` is the quick tier (registries, config, schedules, momentum,
            model shapes, progress); CI runs everything. A test using ``ray_address`` is marked slow
            here as well, should its module forget to.
  postgres  needs PostgreSQL at tests.services.PG_URL (SWEEP_TEST_PG_URL overrides it).
  browser   needs headless Chromium on PATH.
  cluster   starts Ray nodes in network namespaces (tests/cluster.py): needs root and ``ip netns``.
  fashion_mnist  reads Fashion-MNIST from Debian's dataset-fashion-mnist package (/usr/share/datasets).
A ``postgres``, ``browser``, ``cluster`` or ``fashion_mnist`` test is skipped when what it needs is missing,
except under CI (``CI`` set), where it fails instead: CI runs as root and .ci/run provides the services, so a
missing one is a broken CI setup.
"""

from __future__ import annotations

import os

import pytest

from tests import services

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# One torch thread in the test process (set before anything imports torch), as a sweep's worker
# trains with one per trial: on a shared 2-core machine two spinning OpenMP threads made the quick
# tier's in-process trainings 4-10x slower whenever anything else ran (46 s instead of 10 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

SERVICE_MARKERS = ("postgres", "browser", "cluster", "fashion_mnist")


def pytest_collection_modifyitems(items):
    """A test that starts Ray is slow even if its author forgot the marker: the quick tier never starts Ray."""
    for item in items:
        if "ray_address" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture (Ray included) is set up: skip, or under CI fail, without the service."""
    for marker in SERVICE_MARKERS:
        if item.get_closest_marker(marker) is None:
            continue
        reason = services.missing(marker)
        if reason is None:
            continue
        if services.in_ci():
            pytest.fail(
                f"{reason}, and CI is set: CI must run the {marker} tests (.ci/run provides the service)", pytrace=False
            )
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def every_sweep_checked(tmp_path_factory):
    """After the last test, `sweep check` on every finished sweep the session built (but those a
    test left damaged on purpose, ``sweep_helpers.mark_damaged_on_purpose``): each must be healthy,
    else the last test's teardown errors with the check's lines. SWEEP_TEST_NO_FINAL_CHECK=1 skips it."""
    yield
    if os.environ.get("SWEEP_TEST_NO_FINAL_CHECK"):
        return
    base = tmp_path_factory.getbasetemp()
    if not any(base.rglob("sweep.yaml")):  # the quick tier builds none: nothing heavy imported
        return
    from tests.sweep_helpers import unhealthy_sweeps

    found = unhealthy_sweeps(base)
    if found:
        pytest.fail("`sweep check` finds damage in sweeps the tests built:\n" + "\n".join(found), pytrace=False)


@pytest.fixture(scope="session")
def ray_address():
    """Start Ray once; sweeps run in-process reuse it, drivers in subprocesses connect to it."""
    import ray

    # one GPU declared (on a CPU machine Ray schedules against it; a trial then trains on the CPU):
    # tests/test_gpu_slot.py runs GPU tasks; a CUDA machine's tests use its first GPU
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits, split as a trial splits it (seed 0), loaded once for the whole session."""
    from sweep.core.datasets import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def pg_storage():
    """The PostgreSQL storage URL of the ``postgres`` tests."""
    return services.PG_URL


@pytest.fixture
def sweep_overrides(tmp_path):
    """A shrunken quick-start sweep writing under tmp_path."""
    return [f"output_dir={tmp_path / 'sweeps'}", "epochs=2", "batch_size=64", "reeval_seeds=0", "report_figures=false"]
