"""The typed records that cross process boundaries: what a trial reports per epoch, its outcome, and
its checkpoint. The training loops make them, the workers and stores pass them on, the driver reads
them; so they live in core, and torch is imported only inside ``Checkpoint``'s methods (the driver
never imports it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sweep.core.outcome import Status
from sweep.core.target import CurvePoint

if TYPE_CHECKING:
    import torch

__all__ = ["PruneTrial", "EpochMetrics", "TrialResult", "Checkpoint", "Reporter", "Saver"]


class PruneTrial(Exception):
    """Raised by a reporter to stop the trial early (the pruner decided it is not promising)."""


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # from 1
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    scheduled_lr: float  # the schedule's LR at the epoch's start (not the searched `lr`)
    epoch_seconds: float
    images_per_second: float

    def logged(self) -> dict[str, float]:
        """The per-epoch metrics as logged (the epoch is the step)."""
        return {k: v for k, v in asdict(self).items() if k != "epoch"}


@dataclass
class TrialResult:
    status: Status
    reason: str = ""
    epochs_run: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # final metrics, whatever the outcome
    history: list[EpochMetrics] = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)  # every validation evaluation (``core.target``)

    @property
    def value(self) -> float:
        """The objective: the final validation accuracy (0 when none was measured)."""
        value = self.metrics.get("val_accuracy", 0.0)
        return value if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class Checkpoint:
    """A trial's state at the end of epoch ``epoch`` (its schedule already stepped): everything the
    next epoch depends on, so a trial resumed from it on the CPU ends bit-identical to one that never
    stopped. Its tensors are the live ones: store it before training goes on."""

    epoch: int
    model: dict[str, Any]  # model.state_dict()
    optimizer: dict[str, Any]  # optimizer.state_dict()
    schedule: dict[str, Any]  # ScheduleDriver.state_dict()
    generator: torch.Tensor  # batch order and augmentation draws
    rng: torch.Tensor  # the global CPU RNG (dropout, init of anything built later)
    device_rng: torch.Tensor | None  # the CUDA RNG, when training there
    first_loss: float | None  # the divergence check compares against it
    history: tuple[EpochMetrics, ...]  # the epochs so far: final metrics come out as without a stop
    # the evaluations so far (mid-epoch ones too); a default, so checkpoints from before still load
    curve: tuple[CurvePoint, ...] = ()

    @classmethod
    def capture(
        cls,
        epoch: int,
        model,
        optimizer,
        schedule,
        generator: torch.Generator,
        first_loss: float | None,
        history,
        curve=(),
    ) -> Checkpoint:
        import torch

        device = generator.device
        return cls(
            epoch,
            model.state_dict(),
            optimizer.state_dict(),
            schedule.state_dict(),
            generator.get_state(),
            torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            first_loss,
            tuple(history),
            tuple(curve),
        )

    def detached(self) -> Checkpoint:
        """A copy whose tensors are on the CPU and no longer shared with training."""
        import copy

        import torch
        from torch.utils._pytree import tree_map

        def own(value):
            return value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else copy.deepcopy(value)

        return Checkpoint(
            self.epoch,
            tree_map(own, self.model),
            tree_map(own, self.optimizer),
            copy.deepcopy(self.schedule),
            own(self.generator),
            own(self.rng),
            None if self.device_rng is None else own(self.device_rng),
            self.first_loss,
            self.history,
            self.points(),
        )

    def points(self) -> tuple[CurvePoint, ...]:
        """The curve so far; a checkpoint pickled before curves were kept has none."""
        return getattr(self, "curve", ())

    def restore(self, model, optimizer, schedule, generator: torch.Generator) -> None:
        """Put freshly built training objects where this checkpoint left them."""
        import torch

        model.load_state_dict(self.model)
        schedule.load_state_dict(self.schedule)
        optimizer.load_state_dict(self.optimizer)  # after the schedule: building a scheduler moves the LR
        generator.set_state(self.generator)
        torch.set_rng_state(self.rng)
        if self.device_rng is not None and generator.device.type == "cuda":
            torch.cuda.set_rng_state(self.device_rng, generator.device)


Reporter = Callable[[EpochMetrics], None]  # a trial's per-epoch callback; raises PruneTrial to stop it
Saver = Callable[[Checkpoint], None]  # a trial's checkpoint callback
