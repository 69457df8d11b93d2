"""A trial's outcome: one status enum, how each status is written to Optuna and MLflow, and the
one tally of outcomes that the live view, the final table, ``summary.json`` and ``sweep ls`` use.

Nothing else in the project decides what a state means. Optuna states are named by their enum
member names (``COMPLETE`` ...) so this module needs no Optuna import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from sweep.core.keys import Attr


class Status(str, Enum):
    OK = "ok"  # trained every epoch
    DIVERGED = "diverged"  # loss became NaN/inf or exploded; stopped at once
    PRUNED = "pruned"  # the study's pruner stopped it
    FAILED = "failed"  # an exception in the trial, or its worker died past Ray's retries
    INTERRUPTED = "interrupted"  # the driver died or stopped; queued again, not counted


@dataclass(frozen=True)
class StatusRecord:
    """How a status is written: the Optuna state, the MLflow run status, and what it counts for."""

    optuna_state: str
    mlflow_status: str  # FINISHED / FAILED / KILLED: the run table's status icon
    uses_budget: bool  # counts against the optimizer's `trials`
    scored: bool  # its value may be the optimizer's best


RECORDS: dict[Status, StatusRecord] = {
    Status.OK: StatusRecord("COMPLETE", "FINISHED", uses_budget=True, scored=True),
    # COMPLETE with the accuracy it reached, so the sampler learns to avoid the region; not a result
    Status.DIVERGED: StatusRecord("COMPLETE", "FAILED", uses_budget=True, scored=False),
    Status.PRUNED: StatusRecord("PRUNED", "KILLED", uses_budget=True, scored=False),
    Status.FAILED: StatusRecord("FAIL", "FAILED", uses_budget=True, scored=False),
    Status.INTERRUPTED: StatusRecord("FAIL", "KILLED", uses_budget=False, scored=False),
}

FINAL_PREFIX = "final_"


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished trial came to, as recorded in Optuna (the source of truth)."""

    number: int
    status: Status
    value: float | None = None  # the objective Optuna holds (None unless COMPLETE)
    reason: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)  # final metrics, without the prefix
    attempts: int = 1
    no_checkpoint: str = ""  # the first checkpoint it could not store: its epoch and why ("": none failed)

    @property
    def record(self) -> StatusRecord:
        return RECORDS[self.status]


def status_from_optuna(state: str, attrs: Mapping[str, object]) -> Status | None:
    """The status of a trial from its Optuna state and attributes; None while it runs or waits.
    Trials written before the status attribute existed are classified by their state alone."""
    written = attrs.get(Attr.STATUS)
    if written in Status._value2member_map_ and RECORDS[Status(written)].optuna_state == state:
        return Status(written)
    if state == "COMPLETE":
        return Status.OK
    if state == "PRUNED":
        return Status.PRUNED
    if state == "FAIL":
        legacy = attrs.get("fail_reason")
        return Status.INTERRUPTED if legacy == Status.INTERRUPTED.value else Status.FAILED
    return None


@dataclass
class Tally:
    """Counts per status and the best scored value: one optimizer's row, live or final."""

    budget: int
    counts: dict[Status, int] = field(default_factory=lambda: {s: 0 for s in Status})
    best: float | None = None
    best_number: int | None = None
    running: int = 0

    def add(self, outcome: TrialOutcome) -> None:
        self.counts[outcome.status] += 1
        if outcome.record.scored and outcome.value is not None and (self.best is None or outcome.value > self.best):
            self.best, self.best_number = outcome.value, outcome.number

    @property
    def done(self) -> int:
        """Trials that count against the budget."""
        return sum(n for s, n in self.counts.items() if RECORDS[s].uses_budget)

    @classmethod
    def of(cls, budget: int, outcomes: Iterable[TrialOutcome]) -> Tally:
        tally = cls(budget)
        for outcome in outcomes:
            tally.add(outcome)
        return tally
