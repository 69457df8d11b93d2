"""The LR-schedule registry and the driver that steps a schedule at the right granularity.

Every schedule is a torch.optim.lr_scheduler, built from a declarative spec (defaults and a
search space as data). ``granularity`` says when it is stepped: ``epoch`` after each epoch,
``batch`` after each optimizer step (one-cycle), ``plateau`` after each epoch with the validation
loss. An optional linear warm-up (``warmup_epochs``, stepped per batch) runs in front of any of
them; the main schedule is built when the warm-up ends and spans the remaining epochs.

Importing this module does not import torch: the builders and ``ScheduleDriver`` reach
torch.optim.lr_scheduler through ``_sched()`` when they run, so the registry and parameter
validation stay fast for the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optim.errors import SpecError, UnknownEntry
from optim.ranges import NON_NEGATIVE, NON_NEGATIVE_INT, OPEN_UNIT, POSITIVE_INT, Interval
from optim.space import Distribution, IntRange, Uniform

if TYPE_CHECKING:
    import torch


def _sched():
    """``torch.optim.lr_scheduler``, imported on first use (only when a schedule is built)."""
    from torch.optim import lr_scheduler

    return lr_scheduler


@dataclass(frozen=True)
class Horizon:
    """How long the main schedule runs: ``epochs`` epochs of ``steps_per_epoch`` batches."""

    epochs: int
    steps_per_epoch: int


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    granularity: str  # "epoch" | "batch" | "plateau"
    build: Callable[[torch.optim.Optimizer, Mapping[str, Any], Horizon], Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, Distribution] = field(default_factory=dict)
    description: str = ""


def _cosine(opt, p, h):
    eta_min = opt.param_groups[0]["initial_lr"] * p["min_lr_factor"]
    if p["restart_epochs"]:
        return _sched().CosineAnnealingWarmRestarts(
            opt, T_0=int(p["restart_epochs"]), T_mult=int(p["restart_mult"]), eta_min=eta_min
        )
    return _sched().CosineAnnealingLR(opt, T_max=max(1, h.epochs), eta_min=eta_min)


def _multistep(opt, p, h):
    milestones = sorted({max(1, round(f * h.epochs)) for f in p["milestones"]})
    return _sched().MultiStepLR(opt, milestones=milestones, gamma=p["gamma"])


SCHEDULES: dict[str, ScheduleSpec] = {
    spec.name: spec
    for spec in [
        ScheduleSpec(
            "constant",
            "epoch",
            lambda opt, p, h: _sched().ConstantLR(opt, factor=1.0, total_iters=0),
            description="the base LR throughout",
        ),
        ScheduleSpec(
            "step",
            "epoch",
            lambda opt, p, h: _sched().StepLR(opt, step_size=int(p["step_epochs"]), gamma=p["gamma"]),
            {"step_epochs": 3, "gamma": 0.3},
            {"gamma": Uniform(0.1, 0.9)},
            "multiply by gamma every step_epochs epochs",
        ),
        ScheduleSpec(
            "multistep",
            "epoch",
            _multistep,
            {"milestones": (0.5, 0.75), "gamma": 0.1},
            {"gamma": Uniform(0.05, 0.5)},
            "multiply by gamma at fractions `milestones` of the run",
        ),
        ScheduleSpec(
            "exponential",
            "epoch",
            lambda opt, p, h: _sched().ExponentialLR(opt, gamma=p["gamma"]),
            {"gamma": 0.8},
            {"gamma": Uniform(0.5, 0.99)},
            "multiply by gamma every epoch",
        ),
        ScheduleSpec(
            "cosine",
            "epoch",
            _cosine,
            {"min_lr_factor": 0.0, "restart_epochs": 0, "restart_mult": 1},
            {"min_lr_factor": Uniform(0.0, 0.1)},
            "cosine decay to min_lr_factor*lr; restart_epochs > 0 adds warm restarts (SGDR)",
        ),
        ScheduleSpec(
            "onecycle",
            "batch",
            lambda opt, p, h: _sched().OneCycleLR(
                opt,
                max_lr=opt.param_groups[0]["initial_lr"],
                total_steps=h.epochs * h.steps_per_epoch,
                pct_start=p["pct_start"],
                div_factor=p["div_factor"],
                final_div_factor=p["final_div_factor"],
                anneal_strategy="cos",
                cycle_momentum=False,
            ),
            {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4},
            {"pct_start": Uniform(0.1, 0.5)},
            "one-cycle: ramp up to lr, then anneal, per batch",
        ),
        ScheduleSpec(
            "polynomial",
            "epoch",
            lambda opt, p, h: _sched().PolynomialLR(opt, total_iters=max(1, h.epochs), power=p["power"]),
            {"power": 1.0},
            {"power": Uniform(0.5, 3.0)},
            "lr*(1 - t/T)^power",
        ),
        ScheduleSpec(
            "plateau",
            "plateau",
            lambda opt, p, h: _sched().ReduceLROnPlateau(
                opt, mode="min", factor=p["factor"], patience=int(p["patience"])
            ),
            {"factor": 0.3, "patience": 1},
            {"factor": Uniform(0.1, 0.7), "patience": IntRange(0, 3)},
            "multiply by factor when the validation loss stops improving",
        ),
    ]
}

WARMUP_DEFAULTS = {"warmup_epochs": 0, "warmup_start_factor": 0.1}

# Every schedule parameter's allowed range, checked before a trial starts (torch checks late).
PARAM_RANGES = {
    "warmup_epochs": NON_NEGATIVE_INT,
    "warmup_start_factor": Interval(0.0, 1.0, low_open=True, high_open=False),
    "step_epochs": POSITIVE_INT,
    "gamma": Interval(0.0, 1.0, low_open=True, high_open=False),
    "min_lr_factor": Interval(0.0, 1.0, high_open=False),
    "restart_epochs": NON_NEGATIVE_INT,
    "restart_mult": POSITIVE_INT,
    "pct_start": OPEN_UNIT,
    "div_factor": Interval(1.0, low_open=False),
    "final_div_factor": Interval(1.0),
    "power": NON_NEGATIVE,
    "factor": OPEN_UNIT,
    "patience": NON_NEGATIVE_INT,
}


def get_schedule(name: str) -> ScheduleSpec:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise UnknownEntry(
            "schedule", f"unknown schedule {name!r}; choose from: {', '.join(sorted(SCHEDULES))}"
        ) from None


def resolve_schedule_params(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``; raises KeyError naming an unknown key."""
    spec = get_schedule(name)
    allowed = {**WARMUP_DEFAULTS, **spec.defaults}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise UnknownEntry(f"schedule.{unknown[0]}", f"{name} takes {', '.join(sorted(allowed))}")
    params = {**allowed, **given}
    for key, value in given.items():
        if key == "milestones":
            ok = (
                isinstance(value, (list, tuple))
                and value
                and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in value)
            )
            if not ok:
                raise SpecError(
                    "schedule.milestones", f"must be a list of fractions of the run in (0, 1), got {value!r}"
                )
        else:
            PARAM_RANGES[key].check(f"schedule.{key}", value)
    if params.get("restart_epochs") and params.get("restart_mult", 1) < 1:
        raise SpecError(
            "schedule.restart_mult", f"must be an integer >= 1 with restarts, got {params['restart_mult']!r}"
        )
    return params


class ScheduleDriver:
    """Steps warm-up and main schedule; the trial calls ``after_batch`` and ``after_epoch``."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, name: str, params: Mapping[str, Any], epochs: int, steps_per_epoch: int
    ):
        self.spec = get_schedule(name)
        self.params = resolve_schedule_params(name, params)
        self.optimizer = optimizer
        warmup_epochs = min(self.params["warmup_epochs"], epochs)
        self.warmup_steps = warmup_epochs * steps_per_epoch
        self.horizon = Horizon(epochs - warmup_epochs, steps_per_epoch)
        self.warmup_done = 0
        self.main = None
        self._built_this_epoch = False
        if self.warmup_steps:
            self.warmup = _sched().LinearLR(
                optimizer,
                start_factor=self.params["warmup_start_factor"],
                end_factor=1.0,
                total_iters=self.warmup_steps,
            )
        else:
            self._build_main()
            self._built_this_epoch = False  # built before epoch 0: the first after_epoch steps it

    def _build_main(self) -> None:
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.main = self.spec.build(self.optimizer, self.params, self.horizon)
        self._built_this_epoch = True

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def after_batch(self) -> None:
        if self.main is None:
            self.warmup.step()
            self.warmup_done += 1
            if self.warmup_done == self.warmup_steps and self.horizon.epochs:  # no epochs left: no main
                self._build_main()
        elif self.spec.granularity == "batch" and self.horizon.epochs:
            self.main.step()

    def state_dict(self) -> dict[str, Any]:
        """Where the schedule stands, torch schedulers' own state included: a checkpoint resumes from it."""
        return {
            "warmup_done": self.warmup_done,
            "built_this_epoch": self._built_this_epoch,
            "warmup": self.warmup.state_dict() if self.warmup_steps else None,
            "main": self.main.state_dict() if self.main is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` on a freshly built driver. Load the optimizer's state after
        this: building a torch scheduler moves the optimizer's LR, the optimizer's state puts it back."""
        self.warmup_done = state["warmup_done"]
        if state["warmup"] is not None:
            self.warmup.load_state_dict(state["warmup"])
        if state["main"] is not None:
            if self.main is None:  # the warm-up ended before the checkpoint
                self._build_main()
            self.main.load_state_dict(state["main"])
        self._built_this_epoch = state["built_this_epoch"]

    def after_epoch(self, val_loss: float) -> None:
        if self.main is None or self._built_this_epoch:
            self._built_this_epoch = False
            return
        if self.spec.granularity == "epoch":
            self.main.step()
        elif self.spec.granularity == "plateau":
            self.main.step(val_loss)


def lr_trace(
    lr: float,
    name: str,
    params: Mapping[str, Any],
    epochs: int,
    steps_per_epoch: int,
    val_losses: tuple[float, ...] = (),
) -> list[float]:
    """The learning rate at every step of a run, from the same ``ScheduleDriver`` a trial steps
    (for the report's schedule plot). ``val_losses`` (per epoch) drive a plateau schedule as in
    the run; without them it sees no improvement after the first epoch."""
    import warnings

    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    trace = []
    with warnings.catch_warnings():  # no optimizer step is taken: torch would warn on every scheduler step
        warnings.simplefilter("ignore", UserWarning)
        driver = ScheduleDriver(optimizer, name, params, epochs, steps_per_epoch)
        for epoch in range(epochs):
            for _ in range(steps_per_epoch):
                trace.append(driver.lr)
                driver.after_batch()
            driver.after_epoch(val_losses[epoch] if epoch < len(val_losses) else 1.0)
    return trace
