"""Optuna, through one adapter: storages, one study per optimizer, and every trial operation the
driver and the workers need, on Optuna's public API.

The study is the single source of truth for trial state; MLflow and the summary derive from it.
The one thing Optuna's public API cannot do is rebuild a live ``optuna.Trial`` in another process
(a Ray worker, or a new driver repairing a dead one's trial) from what the study stores: that
needs the storage's trial id, which only ``FrozenTrial._trial_id`` exposes. It stays in
``_trial_id`` below and nowhere else.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.core.keys import Attr
from sweep.core.objectives import DEFAULT as DEFAULT_OBJECTIVES
from sweep.core.objectives import directions, values_of
from sweep.core.outcome import FINAL_PREFIX, RECORDS, Status, TrialOutcome, status_from_optuna
from sweep.core.registries import PRUNERS, SAMPLERS

DIRECTION = "maximize"  # validation accuracy
REEVAL = "reeval"  # the re-evaluation study's name suffix: <sweep>/<optimizer>/reeval
optuna.logging.set_verbosity(optuna.logging.WARNING)

__all__ = [
    "SweepStudy",
    "open_storage",
    "study_name",
    "foreign_studies",
    "make_sampler",
    "make_pruner",
    "SAMPLERS",
    "PRUNERS",
]


@functools.lru_cache(maxsize=8)
def open_storage(url: str) -> optuna.storages.BaseStorage:
    """One storage object per process and URL (workers reuse it across trials)."""
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url[len("journal://") :]))
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and not Path(path).exists():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:  # WAL lets readers and one writer work concurrently
            conn.execute("PRAGMA journal_mode=WAL")
        return _cached(optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}))
    return _cached(optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}))


def _cached(storage: optuna.storages.RDBStorage) -> optuna.storages.BaseStorage:
    """The SQL storage behind Optuna's trial cache, as Optuna wraps one it opens from a URL. Given a
    storage object instead, ``load_study`` wraps it in a new, empty cache every time, so a worker
    re-read the whole study for each trial: 2 s a trial at 1,000 trials on PostgreSQL
    (bench/driver_scale.py), against 27 ms cached. ``get_storage`` is how Optuna builds that cache
    (its gRPC proxy docs use it too); a cache it is given is passed through unchanged."""
    return optuna.storages.get_storage(storage)


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return SAMPLERS[name](seed, trials)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    return PRUNERS[name](epochs)


def study_name(sweep_name: str, optimizer: str, reeval: bool = False) -> str:
    return f"{sweep_name}/{optimizer}" + (f"/{REEVAL}" if reeval else "")


def foreign_studies(storage_url: str, sweep_name: str, sweep_id: str) -> list[str]:
    """Studies of this sweep's name in the storage that another sweep (another id) created."""
    prefix = study_name(sweep_name, "")
    return [
        summary.study_name
        for summary in optuna.get_all_study_summaries(open_storage(storage_url), include_best_trial=False)
        if summary.study_name.startswith(prefix) and summary.user_attrs.get(Attr.SWEEP_ID, sweep_id) != sweep_id
    ]


def _trial_id(trial: FrozenTrial) -> int:
    """The storage's id of a trial: the only way to rebuild a live ``optuna.Trial`` elsewhere.
    Optuna has no public equivalent (``Trial(study, trial_id)`` is public, the id is not)."""
    return trial._trial_id


def accuracy(trial: FrozenTrial) -> float | None:
    """The validation accuracy a finished trial was told: its first value, so that a
    multi-objective study reads like a single-objective one (``FrozenTrial.value`` raises there)."""
    return trial.values[0] if trial.values else None


def outcome_of(trial: FrozenTrial) -> TrialOutcome | None:
    """The one classifier: a finished trial's outcome from its Optuna record; None if unfinished."""
    status = status_from_optuna(trial.state.name, trial.user_attrs)
    if status is None:
        return None
    attrs = trial.user_attrs
    return TrialOutcome(
        number=trial.number,
        status=status,
        value=accuracy(trial) if trial.state == TrialState.COMPLETE else None,
        reason=str(attrs.get(Attr.REASON) or attrs.get("fail_reason") or ""),
        metrics={k[len(FINAL_PREFIX) :]: v for k, v in attrs.items() if k.startswith(FINAL_PREFIX)},
        attempts=int(attrs.get(Attr.ATTEMPT, 1)),
        no_checkpoint=str(attrs.get(Attr.NO_CHECKPOINT) or ""),
    )


class SweepStudy:
    """One optimizer's study and the trial operations the engine needs."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage | None = None):
        self.study = study
        self.storage = storage  # where a multi-objective trial's curve is written (``report``)

    @classmethod
    def open(
        cls,
        storage_url: str,
        sweep_name: str,
        optimizer: str,
        sweep_id: str,
        *,
        sampler: str,
        pruner: str,
        seed: int,
        trials: int,
        epochs: int,
        objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    ) -> SweepStudy:
        """Create or load the optimizer's study; its sampler goes on from where the last driver stopped.

        A fresh driver reseeds the sampler with ``seed + trials so far``: the bare seed again would
        replay the draws a resumed sweep already ran. On a new sweep every study starts from the
        same seed. TPE's start-up length is fixed by the first run's budget, so a top-up keeps it.
        Two ``objectives`` make it multi-objective, named in its attributes for the workers' tells
        (``objectives`` is frozen on resume, so a resumed sweep reopens it with the same directions).
        """
        study = optuna.create_study(
            study_name=study_name(sweep_name, optimizer),
            storage=open_storage(storage_url),
            directions=directions(objectives),
            load_if_exists=True,
            pruner=make_pruner(pruner, epochs),
        )
        attrs = [(Attr.SWEEP_ID, sweep_id), (Attr.SAMPLER_BUDGET, trials)]
        if len(objectives) > 1:
            attrs.append((Attr.OBJECTIVES, list(objectives)))
        for key, value in attrs:
            if key not in study.user_attrs:
                study.set_user_attr(key, value)
        study.sampler = make_sampler(
            sampler, seed + len(study.get_trials(deepcopy=False)), study.user_attrs[Attr.SAMPLER_BUDGET]
        )
        return cls(study, open_storage(storage_url))

    @classmethod
    def open_reeval(cls, storage_url: str, sweep_name: str, optimizer: str, sweep_id: str) -> SweepStudy:
        """Create or load the optimizer's re-evaluation study. Its trials are all enqueued with the
        search trial's parameters (no sampler draws them) and train every epoch (no pruner)."""
        study = optuna.create_study(
            study_name=study_name(sweep_name, optimizer, reeval=True),
            storage=open_storage(storage_url),
            direction=DIRECTION,
            load_if_exists=True,
            pruner=make_pruner("none", 1),
            sampler=make_sampler("random", 0, 1),
        )
        if Attr.SWEEP_ID not in study.user_attrs:
            study.set_user_attr(Attr.SWEEP_ID, sweep_id)
        return cls(study, open_storage(storage_url))

    @classmethod
    def find(cls, storage_url: str, name: str) -> SweepStudy | None:
        """A study to read (the report), or None when the storage has none of that name."""
        try:
            storage = open_storage(storage_url)
            return cls(optuna.load_study(study_name=name, storage=storage), storage)
        except KeyError:
            return None

    @classmethod
    def load(cls, storage_url: str, name: str, pruner: str, epochs: int) -> SweepStudy:
        """A worker's handle on the study: the same pruner decides there."""
        storage = open_storage(storage_url)
        return cls(optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(pruner, epochs)), storage)

    @property
    def name(self) -> str:
        return self.study.study_name

    def set_attr(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    @property
    def objectives(self) -> tuple[str, ...]:
        """What the study optimizes, in order (``core.objectives``); validation accuracy alone
        unless it was opened with more."""
        return tuple(self.study.user_attrs.get(Attr.OBJECTIVES, DEFAULT_OBJECTIVES))

    @functools.cached_property
    def multi_objective(self) -> bool:
        """Read once: a study's directions never change, and each read may be a storage call."""
        return len(self.study.directions) > 1

    def pareto(self) -> list[FrozenTrial]:
        """The Pareto set of a multi-objective study (Optuna's ``best_trials``); [] for a
        single-objective one, whose best is the report's ranking."""
        return list(self.study.best_trials) if self.multi_objective else []

    # ---- reading ----
    def trials(self, states: Iterable[TrialState] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=tuple(states) if states is not None else None)

    def record(self, number: int) -> FrozenTrial:
        """A trial's record by number (numbers run 0..n-1 within a study, in order)."""
        trials = self.trials()
        if number < len(trials) and trials[number].number == number:
            return trials[number]
        return next(t for t in trials if t.number == number)

    def running(self) -> list[FrozenTrial]:
        return self.trials(states=(TrialState.RUNNING,))

    def outcomes(self) -> list[TrialOutcome]:
        return [o for o in map(outcome_of, self.trials()) if o is not None]

    def waiting(self) -> int:
        return len(self.trials(states=(TrialState.WAITING,)))

    # ---- writing ----
    def ask(self) -> optuna.Trial:
        return self.study.ask()

    def live_trial(self, number: int) -> optuna.Trial:
        """The running trial ``number`` as a live ``optuna.Trial`` (report, should_prune, attrs)."""
        return optuna.trial.Trial(self.study, _trial_id(self.record(number)))

    def report(self, trial: optuna.Trial, value: float, step: int) -> None:
        """A running trial's validation accuracy at ``step``: the pruner's input, and the curve the
        report draws and a retried attempt reads. Optuna's ``Trial.report`` refuses a
        multi-objective study (it exists for pruning, which such a study has not); its storage
        keeps the curve all the same."""
        if not self.multi_objective:
            trial.report(value, step)
        elif self.storage is not None:
            self.storage.set_trial_intermediate_value(_trial_id(self.record(trial.number)), step, value)

    def should_prune(self, trial: optuna.Trial) -> bool:
        """The pruner's verdict; never for a multi-objective trial (``Trial.should_prune`` raises)."""
        return not self.multi_objective and trial.should_prune()

    def set_trial_attrs(self, number: int, attrs: Mapping[str, Any]) -> None:
        trial = self.live_trial(number)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def enqueue_retry(self, trial: FrozenTrial) -> None:
        """Queue an interrupted trial's parameters again, once (``retry_of`` names the original)."""
        self.enqueue(trial.params, {Attr.RETRY_OF: trial.number})

    def enqueue(self, params: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """Queue a trial with fixed parameters (a re-evaluation); ``ask`` hands it out."""
        self.study.enqueue_trial(dict(params), user_attrs=dict(attrs))

    def finish(
        self,
        number: int,
        status: Status,
        reason: str = "",
        metrics: Mapping[str, float] = (),
        value: float | None = None,
    ) -> TrialOutcome:
        """Record a trial's outcome, unless it is already finished (then the record stands): the
        status, reason and final metrics as attributes, then the state through ``tell``: one value
        (the validation accuracy), or one per objective (``core.objectives.values_of``).
        Returns the outcome Optuna now holds."""
        record = RECORDS[status]
        current = self.record(number)
        if not current.state.is_finished():
            attrs = {
                Attr.STATUS: status.value,
                **{f"{FINAL_PREFIX}{k}": float(v) for k, v in dict(metrics).items() if math.isfinite(v)},
            }
            if reason:
                attrs[Attr.REASON] = reason
            self.set_trial_attrs(number, attrs)
            if record.optuna_state == "COMPLETE":
                told_value = value if value is not None and math.isfinite(value) else 0.0
                if self.multi_objective:
                    diverged = status is Status.DIVERGED
                    told_value = values_of(self.objectives, told_value, dict(metrics), diverged)
                told = self.study.tell(number, told_value, skip_if_finished=True)
            else:
                told = self.study.tell(number, state=TrialState[record.optuna_state], skip_if_finished=True)
            current = told
        return outcome_of(current)


def counts_against_budget(trial: FrozenTrial) -> bool:
    """Whether a trial uses up its optimizer's budget (finished, and not interrupted). Not Optuna's
    ``is_finished``: an interrupted trial is finished to Optuna but is run again."""
    outcome = outcome_of(trial)
    return outcome is not None and outcome.record.uses_budget
