"""The re-evaluation phase's rules: what is trained again, with which seeds, and what is reported.

The search picks each optimizer's best configuration by validation accuracy, from runs that all
share one seed, so its best is partly a lucky draw. Once an optimizer's search is done, its top
``reeval_top`` configurations are trained again with ``reeval_seeds`` further seeds (seed+1,
seed+2, ...: each changes the initialisation and the batch order; the data split stays the
sweep's), every one scored on the test set. Each is a trial of the optimizer's re-evaluation study
(``<sweep>/<optimizer>/reeval``) with the search trial's parameters enqueued, so it is recorded,
retried and resumed exactly like a search trial, and has its own MLflow run.

The configuration reported is the one with the best mean *validation* accuracy over its seeds
(the test set never chooses); its seeds' test accuracies are the optimizer's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

from optuna.trial import FrozenTrial

from sweep.core.keys import Attr
from sweep.core.outcome import Status, TrialOutcome
from sweep.stores.studies import SweepStudy, outcome_of


@dataclass(frozen=True)
class Planned:
    """One re-evaluation to run: the search trial whose configuration it trains, and the seed."""

    source: FrozenTrial
    seed: int
    retry_of: int | None = None  # an interrupted re-evaluation of the same key


@dataclass(frozen=True)
class Reported:
    """The configuration an optimizer's result is about, and its finished re-evaluations."""

    source: int | None  # search trial number; None when nothing scored
    reevals: tuple[tuple[FrozenTrial, TrialOutcome], ...]  # status ok, in seed order
    model_trial: int | None  # the re-evaluation whose model is logged (best val)
    model_run: str | None = None  # its MLflow run


def seeds(sweep_seed: int, reeval_seeds: int) -> tuple[int, ...]:
    return tuple(sweep_seed + i for i in range(1, reeval_seeds + 1))


def top_trials(search: SweepStudy, n: int) -> list[FrozenTrial]:
    """The search's ``n`` best scored trials (status ok), best first; earlier trial on a tie."""
    scored = [
        (o.value, t)
        for t in search.trials()
        if (o := outcome_of(t)) is not None and o.record.scored and o.value is not None
    ]
    scored.sort(key=lambda vt: (-vt[0], vt[1].number))
    return [t for _, t in scored[:n]]


def key_of(trial: FrozenTrial) -> tuple[int, int] | None:
    attrs = trial.user_attrs
    if Attr.SOURCE_TRIAL not in attrs or Attr.REEVAL_SEED not in attrs:
        return None
    return int(attrs[Attr.SOURCE_TRIAL]), int(attrs[Attr.REEVAL_SEED])


def plan(search: SweepStudy, reeval: SweepStudy, sweep_seed: int, reeval_seeds: int, reeval_top: int) -> list[Planned]:
    """The re-evaluations still to queue: each (configuration, seed) runs until it has an outcome
    that counts (ok, diverged, pruned, failed); one waiting, running or counted is not queued again.
    An interrupted one is queued again, naming the trial it retries."""
    have: set[tuple[int, int]] = set()
    interrupted: dict[tuple[int, int], int] = {}
    for t in reeval.trials():
        key = key_of(t)
        if key is None:
            continue
        outcome = outcome_of(t)
        if outcome is None or outcome.record.uses_budget:  # waiting, running, or done
            have.add(key)
        elif outcome.status == Status.INTERRUPTED:
            interrupted.setdefault(key, t.number)
    return [
        Planned(source, seed, interrupted.get((source.number, seed)))
        for source in top_trials(search, reeval_top)
        for seed in seeds(sweep_seed, reeval_seeds)
        if (source.number, seed) not in have
    ]


def enqueue(reeval: SweepStudy, planned: Planned) -> None:
    attrs = {Attr.SOURCE_TRIAL: planned.source.number, Attr.REEVAL_SEED: planned.seed}
    if planned.retry_of is not None:
        attrs[Attr.RETRY_OF] = planned.retry_of
    reeval.enqueue(planned.source.params, attrs)


def reported(search: SweepStudy, reeval: SweepStudy | None, reeval_top: int) -> Reported:
    """Among the top configurations, the one with the best mean validation accuracy over its
    finished re-evaluations (the search's rank breaks ties); before any has finished, the search's
    best trial with none."""
    top = top_trials(search, reeval_top)
    if not top:
        return Reported(None, (), None)
    finished: dict[int, list[tuple[FrozenTrial, TrialOutcome]]] = {}
    for t in reeval.trials() if reeval is not None else ():
        key, outcome = key_of(t), outcome_of(t)
        if key is not None and outcome is not None and outcome.status == Status.OK and outcome.value is not None:
            finished.setdefault(key[0], []).append((t, outcome))
    candidates = [(rank, t.number) for rank, t in enumerate(top) if finished.get(t.number)]
    if not candidates:
        return Reported(top[0].number, (), None)
    source = max(candidates, key=lambda rn: (fmean(o.value for _, o in finished[rn[1]]), -rn[0]))[1]
    runs = tuple(sorted(finished[source], key=lambda to: key_of(to[0])[1]))
    model = max(runs, key=lambda to: (to[1].value, -to[0].number))[0]
    return Reported(source, runs, model.number, model.user_attrs.get(Attr.MLFLOW_RUN))
