"""One error hierarchy: every kind under ``SweepError`` survives pickling (Ray ships it from a
worker to the driver) as itself, with its message and fields."""

from __future__ import annotations

import pickle
import signal

import pytest

from optim import get_optimizer, resolve_schedule_params
from optim.errors import SpecError, UnknownEntry
from sweep.core.config import load_config
from sweep.core.errors import (
    BadSplit,
    ConfigError,
    DatasetUnavailable,
    Stopped,
    StoreUnavailable,
    SweepDamaged,
    SweepError,
)
from sweep.stores.mlflow_sender import GaveUp
from sweep.ui import ServerStartError

EXAMPLES = [
    ConfigError("epochs", "must be an integer in [1, 10000], got 0"),
    DatasetUnavailable("no Fashion-MNIST files under ./data"),
    BadSplit("val_fraction leaves no training images"),
    StoreUnavailable("the Optuna storage", "OperationalError: database is locked"),
    GaveUp("epochs 2-14 not logged"),
    SweepDamaged("sweeps/a/id", "is missing", "restore it from a copy"),
    ServerStartError("the MLflow server exited (code 1)"),
]


def _all_kinds(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_kinds(sub)


def test_every_kind_has_an_example_here():
    assert set(_all_kinds(SweepError)) == {type(e) for e in EXAMPLES}


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_each_kind_pickles_as_itself(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert vars(back) == vars(error)


def test_a_stop_is_not_an_exception_and_pickles_with_its_signal():
    stop = pickle.loads(pickle.dumps(Stopped(signal.SIGTERM)))
    assert stop.signum == signal.SIGTERM and not isinstance(stop, Exception)


def test_registry_errors_are_typed_and_become_config_errors_by_their_fields():
    with pytest.raises(UnknownEntry) as unknown:
        get_optimizer("bogus")
    assert unknown.value.key == "optimizer" and isinstance(unknown.value, KeyError)
    with pytest.raises(SpecError) as bad:
        resolve_schedule_params("multistep", {"milestones": [2]})
    assert (bad.value.key, str(bad.value)) == ("schedule.milestones", f"schedule.milestones: {bad.value.message}")
    assert pickle.loads(pickle.dumps(bad.value)).key == "schedule.milestones"
    with pytest.raises(ConfigError) as config:
        load_config("quickstart", ["optimizer.lr=-1"], mode="sweep")
    assert config.value.key == "optimizer.lr" and config.value.message.startswith("must be a number > 0")
