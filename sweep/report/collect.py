"""Read a sweep back from its stores into a ``Comparison`` (what the report shows).

Optuna is the source of every figure: outcomes, validation curves (the per-epoch reports),
hyperparameters, re-evaluation seeds and their test accuracies. MLflow is read only for what
only it holds: the logged model's URI and, for a plateau schedule, the validation losses that
drove it. Works on a finished or a still-running sweep, and reads nothing it would change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any

from sweep.core.config import SweepConfig
from sweep.core.keys import Attr
from sweep.core.outcome import Status, Tally
from sweep.report import pareto, stats
from sweep.report.comparison import (
    MIN_IMPORTANCE_TRIALS,
    Comparison,
    OptimizerResult,
    SearchedTrial,
    SeedRun,
    SeedStats,
)
from sweep.stores import reeval, tracking
from sweep.stores.studies import SweepStudy, accuracy, outcome_of, study_name
from sweep.stores.sweepdir import Stores


def comparison(cfg: SweepConfig, stores: Stores, state: str, figures: bool = True) -> Comparison:
    """``figures=False`` leaves out what only the figures show (parameter importances, the LR per
    step): a few seconds of fANOVA and torch start-up in a fresh process."""
    results = []
    for opt in cfg.optimizers:
        search = SweepStudy.find(stores.storage, study_name(cfg.name, opt))
        if search is not None:
            again = SweepStudy.find(stores.storage, study_name(cfg.name, opt, reeval=True))
            results.append(optimizer_result(cfg, stores.tracking_uri, opt, search, again, figures))
    return Comparison(
        name=cfg.name,
        dataset=cfg.dataset,
        model=cfg.model,
        epochs=cfg.epochs,
        trials=cfg.trials,
        reeval_seeds=cfg.reeval_seeds,
        state=state,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tie_rule=stats.TIE_RULE,
        results=tuple(ranked(results)),
        batch_sizes=tuple(cfg.batch_sizes or ()),
        settings=cfg.to_dict(),
        pareto=pareto.fronts(cfg, stores),
    )


def ranked(results: list[OptimizerResult]) -> list[OptimizerResult]:
    """Best mean test accuracy first, ties marked against the top one (``stats.rank_and_tie``);
    optimizers without re-evaluations after, by best validation accuracy."""
    tested = {r.optimizer: r for r in results if r.reevals}
    order = stats.rank_and_tie({name: [s.test_accuracy for s in r.reevals] for name, r in tested.items()})
    out = [dataclasses.replace(tested[t.name], tied=t.tied, p_value=t.p_value) for t in order]
    rest = [r for r in results if r.optimizer not in tested]
    rest.sort(key=lambda r: (r.best_val_accuracy is None, -(r.best_val_accuracy or 0.0), r.optimizer))
    return out + rest


def curve(trial) -> tuple[float, ...]:
    """Validation accuracy per epoch, as the trial reported it to Optuna."""
    return tuple(v for _, v in sorted(trial.intermediate_values.items()))


def searched_trial(cfg: SweepConfig, trial, outcome) -> SearchedTrial:
    hp = dict(trial.user_attrs.get(Attr.HYPERPARAMETERS, {}))
    values = curve(trial)
    last = values[-1] if values else outcome.metrics.get("val_accuracy")
    return SearchedTrial(
        number=trial.number,
        status=outcome.status,
        value=outcome.value if outcome.record.scored else None,
        last_val_accuracy=last if last is not None and math.isfinite(last) else None,
        lr=hp.get("lr"),
        schedule=str(hp.get("schedule", cfg.schedules[0])),
        batch_size=int(hp.get("batch_size", trial.params.get("batch_size", cfg.batch_size))),
        hyperparameters=hp,
        val_curve=values,
    )


def optimizer_result(
    cfg: SweepConfig, uri: str, opt: str, search: SweepStudy, again: SweepStudy | None, figures: bool = True
) -> OptimizerResult:
    records = search.trials()
    outcomes = [(t, o) for t in records if (o := outcome_of(t)) is not None]
    trials = tuple(searched_trial(cfg, t, o) for t, o in outcomes if o.status != Status.INTERRUPTED)
    tally = Tally.of(cfg.trials, (o for _, o in outcomes))
    chosen = reeval.reported(search, again, cfg.reeval_top)
    source = search.record(chosen.source) if chosen.source is not None else None
    seed_runs = tuple(
        SeedRun(
            source_trial=chosen.source,
            seed=reeval.key_of(t)[1],
            status=o.status,
            val_accuracy=o.value,
            test_accuracy=o.metrics.get("test_accuracy"),
            val_curve=curve(t),
            run_id=t.user_attrs.get(Attr.MLFLOW_RUN),
        )
        for t, o in chosen.reevals
        if o.metrics.get("test_accuracy") is not None
    )
    reeval_seconds = sum(o.metrics.get("train_seconds", 0.0) for o in (again.outcomes() if again else ()))
    best_hp = dict(source.user_attrs.get(Attr.HYPERPARAMETERS, source.params)) if source is not None else {}
    steps = _steps_per_epoch(search, best_hp, cfg)
    return OptimizerResult(
        optimizer=opt,
        counts={s.value: n for s, n in tally.counts.items()},
        best_trial=chosen.source,
        best_val_accuracy=accuracy(source) if source is not None else None,
        best_hyperparameters=best_hp,
        trials=trials,
        reevals=seed_runs,
        test=accuracy_stats([s.test_accuracy for s in seed_runs]) if seed_runs else None,
        tied=None,
        p_value=None,
        budget=stats.budget_curve([t.value for t in trials]) if trials else None,
        importances=importances(search, {k for t in trials for k in t.hyperparameters}) if figures else {},
        importance_trials=_finished(records),
        lr_per_step=_lr_per_step(uri, source, best_hp, cfg, steps) if figures else (),
        steps_per_epoch=steps,
        train_seconds=round(sum(o.metrics.get("train_seconds", 0.0) for _, o in outcomes) + reeval_seconds, 2),
        best_run_id=source.user_attrs.get(Attr.MLFLOW_RUN) if source is not None else None,
        best_optuna_params=dict(source.params) if source is not None else {},
        model_uri=tracking.model_uri(uri, chosen.model_run) if chosen.model_run else None,
    )


def accuracy_stats(values: list[float]) -> SeedStats:
    """``stats.seed_stats`` with the interval clipped to [0, 1]: an accuracy cannot leave it, and
    Student's t interval over a few seeds can."""
    found = stats.seed_stats(values)
    return dataclasses.replace(found, ci_low=max(0.0, found.ci_low), ci_high=min(1.0, found.ci_high))


def importances(search: SweepStudy, shown: Collection[str] = ()) -> dict[str, float]:
    """Optuna's fANOVA importances (seeded: the same sweep gives the same figure), each under the
    name the table shows (``shown_name``); {} when the study has fewer than
    ``MIN_IMPORTANCE_TRIALS`` finished trials (a forest fitted to 1-3 points ranks noise) or
    nothing varied."""
    import optuna

    if _finished(search.trials()) < MIN_IMPORTANCE_TRIALS:
        return {}
    try:
        found = optuna.importance.get_param_importances(
            search.study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target=accuracy if search.multi_objective else None,  # validation accuracy's importances
        )
    except (RuntimeError, ValueError):
        return {}
    return {shown_name(k, shown): float(v) for k, v in found.items() if math.isfinite(v)}


def _finished(records) -> int:
    return sum(1 for t in records if t.state.name == "COMPLETE")


ONE_MINUS = "one_minus_"  # optim.space.OneMinusLogUniform searches ``beta1`` as ``one_minus_beta1``


def shown_name(param: str, shown: Collection[str]) -> str:
    """An Optuna parameter under the hyperparameter name the table shows (``beta1``, not
    ``one_minus_beta1``; ``x.one_minus_y`` -> ``x.y``), unless the table shows it as it is."""
    stem, dot, leaf = param.rpartition(".")
    if param in shown or not leaf.startswith(ONE_MINUS):
        return param
    return f"{stem}{dot}{leaf[len(ONE_MINUS) :]}"


def _steps_per_epoch(search: SweepStudy, hp: dict[str, Any], cfg: SweepConfig) -> int:
    images = search.study.user_attrs.get(Attr.TRAIN_IMAGES)
    batch = int(hp.get("batch_size", cfg.batch_size))
    return max(1, math.ceil(images / batch)) if images else 1


def _lr_per_step(uri: str, source, hp: dict[str, Any], cfg: SweepConfig, steps: int) -> tuple[float, ...]:
    from optim.schedules import lr_trace

    if source is None or "lr" not in hp:
        return ()
    schedule = str(hp.get("schedule", cfg.schedules[0]))
    params = {k.split(".", 1)[1]: v for k, v in hp.items() if k.startswith(f"{schedule}.")}
    losses: tuple[float, ...] = ()
    if schedule == "plateau" and source.user_attrs.get(Attr.MLFLOW_RUN):
        history = tracking.client(uri).get_metric_history(source.user_attrs[Attr.MLFLOW_RUN], "val_loss")
        losses = tuple(m.value for m in sorted(history, key=lambda m: m.step))
    return tuple(lr_trace(float(hp["lr"]), schedule, params, cfg.epochs, steps, losses))
