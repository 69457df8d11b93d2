"""Sweeps from Python (a script, a notebook), on the CLI's own path, returning typed results.

    from sweep import api
    mine = api.declare_optimizer("my_sgd", "my_pkg.optim:MySGD", {"lr": 0.1, "momentum": 0.9},
                                 space={"lr": api.LogUniform(1e-3, 1.0)})
    result = api.run("quickstart", optimizers=["sgd", "adam", mine], epochs=2)
    for row in result.rows:
        print(row.optimizer, row.test.mean if row.test else row.best_val_accuracy)

``run`` is ``sweep run`` (the same config loading, checks, driver and report) and ``resume`` is
``sweep resume``; a bad value raises ``ConfigError`` naming the key, as the CLI prints it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from optim import declared
from optim.declared import Declaration
from optim.errors import SpecError
from optim.space import Choice, Conditional, Distribution, IntRange, LogUniform, OneMinusLogUniform, Uniform, to_data
from sweep.core.config import SWEEP, load_config
from sweep.core.errors import ConfigError

__all__ = [
    "Choice",
    "Conditional",
    "ConfigError",
    "Declaration",
    "IntRange",
    "LogUniform",
    "OneMinusLogUniform",
    "Uniform",
    "declare_optimizer",
    "resume",
    "run",
]


def declare_optimizer(
    name: str,
    target: str | Callable,
    hyperparameters: Mapping[str, Any],
    space: Mapping[str, Distribution | Mapping] | None = None,
    arguments: Mapping[str, Sequence[str]] | None = None,
    description: str = "",
    schedule_free: bool = False,
    lr_free: bool = False,
) -> Declaration:
    """Your optimizer as a declaration, checked as a YAML file's is: ``target`` is a class (a
    ``torch.optim.Optimizer`` subclass) or ``"package.module:Class"``, called as
    ``target(params, **hyperparameters)``; ``space`` maps hyperparameters to distributions
    (``LogUniform(1e-4, 1e-1)``) or to the YAML vocabulary (``{"log_uniform": [1e-4, 1e-1]}``)."""
    if not isinstance(target, str):
        module = getattr(target, "__module__", None)
        if module in (None, "__main__") or not inspect.getmodule(target):
            raise ConfigError(
                f"custom_optimizers.{name}.class",
                "must live in a module the workers can import (not a notebook's __main__): "
                "move it to a .py file beside the notebook",
            )
        target = f"{module}:{target.__qualname__}"
    data = {k: v if isinstance(v, Mapping) else to_data(v) for k, v in (space or {}).items()}
    try:
        return declared.parse(
            name,
            declared.as_data(target, hyperparameters, data, arguments or {}, description, schedule_free, lr_free),
            f"custom_optimizers.{name}",
        )
    except SpecError as exc:
        raise ConfigError(exc.key, exc.message) from None


def run(
    config: str = "quickstart", *overrides: str, optimizers: Sequence[str | Declaration] | None = None, **keys: Any
):
    """``sweep run CONFIG OVERRIDES...`` with ``keys`` as Python values (``epochs=2``) and
    ``optimizers`` naming built-in, file-declared or ``declare_optimizer`` optimizers. Returns the
    ``SweepResult``: ``.rows`` is the ranked comparison, ``.report`` the whole report."""
    from sweep.execution.launch import run_sweep

    values = dict(keys)
    if optimizers is not None:
        custom = [o for o in optimizers if isinstance(o, Declaration)]
        values["optimizers"] = [o.name if isinstance(o, Declaration) else o for o in optimizers]
        if custom:
            values["custom_optimizers"] = {d.name: d.to_dict() for d in custom}
    cfg = load_config(config, list(overrides), default="quickstart", mode=SWEEP, values=values)
    return run_sweep(cfg)


def resume(name: str, *overrides: str, output_dir: str = "./sweeps"):
    """``sweep resume NAME``: the saved sweep goes on (its declared optimizers come from its
    ``sweep.yaml``); returns the ``SweepResult`` as ``run`` does."""
    from sweep.execution.launch import run_sweep
    from sweep.stores.damage import require_intact
    from sweep.stores.sweepdir import SweepDir, saved_sweep

    require_intact(SweepDir.of(output_dir, name))
    return run_sweep(saved_sweep(output_dir, name, list(overrides))[1])
