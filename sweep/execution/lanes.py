"""What the driver feeds and what it waits on: typed, so the loop reads as what it does."""

from __future__ import annotations

from dataclasses import dataclass

from sweep.execution.pack_worker import PackTask
from sweep.execution.progress import fitted
from sweep.stores import tracking
from sweep.stores.studies import SweepStudy


@dataclass(frozen=True)
class Lane:
    """One study the driver feeds: an optimizer's search, or its re-evaluation. The role names
    its runs in MLflow (``tracking.TRIAL_ROLE`` / ``REEVAL_ROLE``)."""

    optimizer: str
    study: SweepStudy
    role: str

    @property
    def is_reeval(self) -> bool:
        return self.role == tracking.REEVAL_ROLE


@dataclass(frozen=True)
class Running:
    """One trial handed to a worker: its Optuna number and its MLflow run."""

    number: int
    run_id: str


@dataclass(frozen=True)
class InFlight:
    """One Ray task the driver waits on: a solo trial, or a pack of the lane's trials (``pack``)."""

    lane: Lane
    trials: tuple[Running, ...]
    pack: PackTask | None = None


def say(opt: str, text: str) -> None:
    """One line of the sweep's story on the terminal, under the optimizer it concerns."""
    print(fitted(f"[{opt:>9}] {text}"), flush=True)
