"""Repairing what a dead driver, or a dead pack's worker, left behind. Optuna is the source of truth.

A driver that died leaves trials RUNNING in Optuna and runs RUNNING in MLflow; a process that
died between the two writes leaves a run open for a trial Optuna has finished; a torn journal
loses trials whose runs exist. Each repair can be repeated, so dying in the middle of one is
safe too: the next driver does it again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sweep.core.config import SweepConfig
from sweep.core.keys import Attr
from sweep.core.outcome import Status, Tally, TrialOutcome
from sweep.execution.lanes import Lane, say
from sweep.execution.pack_worker import PackTask
from sweep.execution.worker import TrialTask
from sweep.stores import tracking
from sweep.stores.finish import close_from_record, finish_trial, optuna_calls
from sweep.stores.studies import SweepStudy, outcome_of
from sweep.stores.sweepdir import Stores

INTERRUPTED_REASON = "interrupted: the driver stopped before the trial finished; queued again"


class Recovery:
    def __init__(
        self,
        cfg: SweepConfig,
        stores: Stores,
        tracker: tracking.SweepTracker,
        parents: dict[str, str],
        tracking_calls: Callable[[], AbstractContextManager],
    ):
        self.cfg, self.stores, self.tracker, self.parents = cfg, stores, tracker, parents
        self.tracking_calls = tracking_calls  # the driver's MLflow calls: said when slow, StoreUnavailable on error

    def recover(self, lane: Lane) -> int:
        """Finish the lane's RUNNING trials as interrupted (study first, then their runs, as
        everywhere) and queue each interrupted search trial again once (an interrupted
        re-evaluation is queued again by the driver's ``queue_reevals``). Runs of trials the study
        no longer has (a torn journal) are set aside. Returns how many trials the study held: no
        run is left of a higher number."""
        with optuna_calls():
            trials = lane.study.trials()
        with self.tracking_calls():
            runs = self.tracker.trial_runs(lane.optimizer, lane.role)
        self.set_aside_lost(lane, runs, len(trials))
        for t in trials:
            if t.state.name == "RUNNING":
                self.finish_interrupted(lane, t, runs.get(t.number))
        if not lane.is_reeval:
            self.requeue_interrupted(lane)
        return len(trials)

    def set_aside_lost(self, lane: Lane, runs: dict[int, str], known: int) -> None:
        for number, run_id in runs.items():
            if number >= known:
                with self.tracking_calls():
                    self.tracker.orphan(run_id, "its trial was lost from the Optuna storage (torn journal)")
                say(
                    lane.optimizer,
                    f"{lane.role} {number}: its record was lost from the Optuna journal; "
                    "its MLflow run is kept, tagged sweep.orphaned, and the trial runs again",
                )

    def finish_interrupted(self, lane: Lane, trial, run_id: str | None) -> None:
        opt = lane.optimizer
        with self.tracking_calls():
            run_id = (
                trial.user_attrs.get(Attr.MLFLOW_RUN)
                or run_id
                or self.tracker.trial_run(self.parents[opt], opt, trial.number, trial.params, role=lane.role)
            )
        # rewrite_run: a run already closed means the trial's tell was lost (torn journal)
        finish_trial(
            lane.study,
            self.stores.tracking_uri,
            run_id,
            trial.number,
            Status.INTERRUPTED,
            INTERRUPTED_REASON,
            rewrite_run=True,
        )
        say(opt, f"{lane.role} {trial.number} was interrupted: recorded as interrupted")

    def requeue_interrupted(self, lane: Lane) -> None:
        """Queue each interrupted search trial again once, with its parameters, while the budget has room."""
        study = lane.study
        with optuna_calls():
            outcomes = study.outcomes()
            retried = {t.user_attrs.get(Attr.RETRY_OF) for t in study.trials()}
            room = self.cfg.trials - Tally.of(self.cfg.trials, outcomes).done - study.waiting()
            by_number = {t.number: t for t in study.trials()}
        for outcome in outcomes:
            if room > 0 and outcome.status == Status.INTERRUPTED and outcome.number not in retried:
                with optuna_calls():
                    study.enqueue_retry(by_number[outcome.number])
                room -= 1
                say(lane.optimizer, f"trial {outcome.number} queued again with the same parameters")

    def close_finished_runs(self, studies: dict[str, SweepStudy], reevals: dict[str, SweepStudy]) -> None:
        """Close trial and re-evaluation runs left RUNNING although Optuna has the trial's outcome
        (a process died between the two writes)."""
        with self.tracking_calls():
            running = self.tracker.running_trial_runs()
        for (role, opt, number), run_id in running.items():
            study = (reevals if role == tracking.REEVAL_ROLE else studies).get(opt)
            with optuna_calls():
                known = study is not None and number < len(study.trials())
            if known:
                close_from_record(study, self.stores.tracking_uri, run_id, number)

    def after_pack_died(self, lane: Lane, pack: PackTask) -> tuple[list[tuple[int, TrialOutcome]], list[TrialTask]]:
        """A pack's worker died (killed, out of memory, its node lost): the members it had
        finished keep their outcomes; the others go on solo, each from its own checkpoint, as a
        solo trial's retry does (its attempt counted)."""
        finished, go_on = [], []
        for member in pack.members:
            with optuna_calls():
                outcome = outcome_of(lane.study.record(member.number))
            if outcome is None:
                go_on.append(member)
            else:
                finished.append((member.number, outcome))
        say(
            lane.optimizer,
            f"the worker of pack {pack.label} died: trial{'s' if len(go_on) > 1 else ''} "
            f"{', '.join(str(m.number) for m in go_on)} go{'' if len(go_on) > 1 else 'es'} on solo",
        )
        return finished, go_on
