"""The registries and config validation are torch-free; building things still works.

``sweep --help``, ``sweep ls`` and config errors read ``models`` and ``optim`` as data and must
answer in well under a second, so importing them must not import torch (about 2 s on its own).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

TORCH_FREE = """
import sys

import models
import optim
from models import MODELS
from optim import OPTIMIZERS, SCHEDULES, resolve_hyperparameters, resolve_schedule_params
from optim.momentum import FORMULATIONS
from optim.schedules import WARMUP_DEFAULTS

assert MODELS and all(spec.description for spec in MODELS.values())
for name, spec in OPTIMIZERS.items():
    assert resolve_hyperparameters(name, {}) == dict(spec.defaults)
    spec.space, spec.ranges, spec.has_momentum, spec.description
    if "formulation" in spec.defaults:
        for formulation in FORMULATIONS:
            resolve_hyperparameters(name, {"formulation": formulation})
for name, spec in SCHEDULES.items():
    assert resolve_schedule_params(name, {}) == {**WARMUP_DEFAULTS, **spec.defaults}
    spec.space, spec.granularity, spec.description
try:
    resolve_hyperparameters("adam", {"lr": -1})
except ValueError:
    pass
else:
    raise AssertionError("a negative lr was accepted")

loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, f"torch was imported: {loaded[:5]}"
print("torch-free")
"""


def test_registries_and_validation_do_not_import_torch():
    result = subprocess.run(
        [sys.executable, "-c", TORCH_FREE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch-free"


@pytest.mark.slow  # a fresh interpreter builds every optimizer: timm's import alone takes about 2 s
def test_builders_still_work_from_the_same_import_paths():
    import torch

    import optim.momentum
    from models import MODELS, build_model
    from optim import OPTIMIZERS, SCHEDULES, ScheduleDriver, build_optimizer
    from optim.momentum import FORMULATIONS, MomentumSGD
    from optim.momentum_sgd import MomentumSGD as MomentumSGDImpl

    assert MomentumSGD is MomentumSGDImpl
    with pytest.raises(AttributeError):
        optim.momentum.NoSuchName  # noqa: B018

    for name in MODELS:
        model = build_model(name, (1, 8, 8), 10)
        assert isinstance(model, torch.nn.Module)
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        build = pickle.loads(pickle.dumps(MODELS[name].build))
        assert isinstance(build((1, 8, 8), 10), torch.nn.Module)
    from models import build_lenet, build_simple_cnn  # the builders' old names, now resolved lazily

    assert isinstance(build_lenet((1, 8, 8), 10), torch.nn.Module) and callable(build_simple_cnn)

    params = [torch.nn.Parameter(torch.ones(3))]
    for name, spec in OPTIMIZERS.items():
        for formulation in FORMULATIONS if "formulation" in spec.defaults else [None]:
            hp = {"formulation": formulation} if formulation else {}
            opt = build_optimizer(name, params, hp)
            assert isinstance(opt, torch.optim.Optimizer)
            expected = MomentumSGD if formulation in ("heavy_ball", "ema") else torch.optim.Optimizer
            assert isinstance(opt, expected)

    for name in SCHEDULES:
        for warmup_epochs in (0, 1):
            opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1)
            driver = ScheduleDriver(opt, name, {"warmup_epochs": warmup_epochs}, epochs=3, steps_per_epoch=2)
            for _ in range(3):
                for _ in range(2):
                    opt.step()
                    driver.after_batch()
                driver.after_epoch(1.0)
            assert driver.main is not None
            assert driver.lr >= 0


DRIVER_MODULES = (
    "sweep.cli",
    "sweep.execution.launch",
    "sweep.execution.driver",
    "sweep.report.build",
    "sweep.report.files",
    "sweep.execution.best_model",
    "sweep.stores.checkpoints",
    "sweep.execution.worker",
    "mlflow.store.tracking.sqlalchemy_store",
)


@pytest.mark.slow  # a fresh interpreter imports the driver
def test_the_sweep_driver_does_not_import_torch():
    """Only the workers train: a driver that imported torch would pay 2-3 s at every start (and its
    teardown at exit) for nothing. Everything the driver imports, in a fresh interpreter."""
    code = (
        f"import importlib, sys\nfor name in {DRIVER_MODULES!r}:\n    importlib.import_module(name)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
