"""Optimizers and LR schedules under study, each a registry of declarative specs.

Importing the package (registries, ``resolve_*``, ``ScheduleDriver``) does not import torch;
building an optimizer or a schedule does, on first use.
"""

from optim.optimizers import (
    OPTIMIZERS,
    OptimizerSpec,
    build_optimizer,
    get_optimizer,
    resolve_hyperparameters,
    usable_schedules,
)
from optim.schedules import SCHEDULES, ScheduleDriver, ScheduleSpec, get_schedule, resolve_schedule_params

__all__ = [
    "OPTIMIZERS",
    "OptimizerSpec",
    "build_optimizer",
    "get_optimizer",
    "resolve_hyperparameters",
    "usable_schedules",
    "SCHEDULES",
    "ScheduleDriver",
    "ScheduleSpec",
    "get_schedule",
    "resolve_schedule_params",
]
