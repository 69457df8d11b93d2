"""Time to a target accuracy (AlgoPerf's measure of a training run), from a trial's evaluation curve.

A trial records every validation evaluation as a ``CurvePoint``: the optimizer steps and training
images so far, the training seconds so far (evaluation time left out), and the validation accuracy.
Its time to a target is the training time at the first evaluation whose accuracy reaches it, or
None when no evaluation did within the budget (the profile counts that as an infinite time). The
curve is kept whole, so a target that is only known later (``relative:0.99``, a share of the best
accuracy any optimizer reached in the benchmark) is found again from the same record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CurvePoint:
    steps: int  # optimizer steps taken before this evaluation
    images: int  # training images seen before it
    train_seconds: float  # training time before it, evaluation time left out
    val_accuracy: float

    def as_list(self) -> list[float]:
        """As stored (an Optuna attribute is JSON)."""
        return [self.steps, self.images, self.train_seconds, self.val_accuracy]

    @classmethod
    def of(cls, stored: Sequence[float]) -> CurvePoint:
        steps, images, seconds, accuracy = stored
        return cls(int(steps), int(images), float(seconds), float(accuracy))


@dataclass(frozen=True)
class Reached:
    """Where a run first reached its target."""

    seconds: float
    steps: int
    images: int

    def metrics(self) -> dict[str, float]:
        return {"time_to_target_s": self.seconds, "steps_to_target": self.steps, "images_to_target": self.images}


def time_to_target(curve: Iterable[CurvePoint], target: float) -> Reached | None:
    """The first evaluation at or above ``target``; None if none reached it."""
    for point in curve:
        if point.val_accuracy >= target:
            return Reached(point.train_seconds, point.steps, point.images)
    return None


def parse_curve(stored: object) -> list[CurvePoint]:
    """A stored curve (a list of 4-number lists); anything else reads as no curve."""
    if not isinstance(stored, list):
        return []
    try:
        return [CurvePoint.of(p) for p in stored]
    except (TypeError, ValueError):
        return []


def described(curve: Sequence[CurvePoint], target: float, epochs: int) -> str:
    """Whether and when a trial reached ``target``, in words (its run's ``sweep.target`` tag):
    "reached 0.95 at 1.84 s (120 steps)", or "not reached: best 0.9312 < target 0.95 within 3 epochs"."""
    reached = time_to_target(curve, target)
    if reached is not None:
        return f"reached {target:g} at {reached.seconds:.2f} s ({reached.steps} steps)"
    within = f"within {epochs} epoch{'' if epochs == 1 else 's'}"
    if not curve:
        return f"not reached: no evaluation {within}"
    return f"not reached: best {max(p.val_accuracy for p in curve):.4f} < target {target:g} {within}"
