"""The sweep's report: built from the stores (``collect``), written as files (``files``),
published to MLflow; and ``sweep ls``.

All figures are read back from the Optuna studies, the source of truth, through the one outcome
classifier, so a resumed sweep's report covers every trial it ever ran, and the counts match the
live view's. ``sweep run`` ends by building it; ``sweep report NAME`` builds it for any sweep,
finished or still running.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.core.keys import Tag
from sweep.report.comparison import Comparison, OptimizerResult
from sweep.stores.damage import inspect
from sweep.stores.sweepdir import FINISHED

REPORT_ARTIFACTS = "report"  # the sweep-level run's artifact folder


@dataclass(frozen=True)
class Built:
    """A report on disk (and in MLflow): what it says, and where."""

    comparison: Comparison
    folder: Path  # <sweep>/report/: report.html, the PNGs, comparison.csv/.md
    html: Path
    markdown: str  # the ranking table, as printed at the end of `sweep run`
    run_id: str | None  # the sweep-level MLflow run holding it


def build(cfg, stores, sweep_dir, state: str, tracker=None, figures: bool = True) -> Built:
    """Read the sweep from its stores, write the report files and ``summary.json``, and publish
    them to MLflow: the report on the sweep-level run, each optimizer's result on its parent run.
    A finished sweep's runs are closed; a running one's are left running."""
    from sweep.core.errors import store_calls
    from sweep.report import collect
    from sweep.report import files as report_files
    from sweep.stores.finish import MLFLOW

    comparison = collect.comparison(cfg, stores, state, figures)
    files = report_files.write_report(comparison, sweep_dir.report, figures)
    sweep_dir.write_summary(summary(comparison, stores, files.html))
    if tracker is None:
        from sweep.stores.tracking import SweepTracker

        with store_calls(MLFLOW):
            tracker = SweepTracker(
                stores.tracking_uri,
                cfg.name,
                sweep_dir.artifacts if stores.local_tracking else None,
                sweep_dir.read_id() or "",
            )
    markdown = report_files.markdown_table(comparison)
    with store_calls(MLFLOW):  # a tracking store that fails stops the command, said as such
        run_id = publish(tracker, comparison, sweep_dir.report, markdown, state == FINISHED, stores.artifacts)
    return Built(comparison, sweep_dir.report, files.html, markdown, run_id)


def summary(comparison: Comparison, stores, html: Path) -> dict[str, Any]:
    """``summary.json``: the comparison's figures, without the per-trial detail."""
    from sweep.core.credentials import public
    from sweep.report.files import ranking_rows

    ties = {row.optimizer: row.tie_label() for row in ranking_rows(comparison)}
    optimizers = {}
    for rank, r in enumerate(comparison.results, 1):
        test = r.test
        optimizers[r.optimizer] = {
            "rank": rank,
            "best_val_accuracy": r.best_val_accuracy,
            "best_trial": r.best_trial,
            "test_accuracy_mean": test.mean if test else None,
            "test_accuracy_std": test.std if test else None,
            "test_accuracy_ci95": [test.ci_low, test.ci_high] if test and test.spread_measured else None,
            "seeds": test.n if test else 0,
            "tied": r.tied,
            "tie": ties[r.optimizer],  # the table's words: 'not distinguishable with 3 seeds (p = ...)', 'n/a: ...'
            "p_value": r.p_value,
            "best_params": dict(r.best_hyperparameters),
            "best_optuna_params": dict(r.best_optuna_params),
            "share_within_2pct": r.budget.share_within_2pct if r.budget else None,
            "trials_to_1pct": r.budget.trials_to_1pct if r.budget else None,
            "model_uri": r.model_uri,
            "best_run_id": r.best_run_id,
            "train_seconds": r.train_seconds,
            **r.counts,
        }
    return {
        "name": comparison.name,
        "dataset": comparison.dataset,
        "model": comparison.model,
        "epochs": comparison.epochs,
        "trials_per_optimizer": comparison.trials,
        "reeval_seeds": comparison.reeval_seeds,
        "state": comparison.state,
        "generated": comparison.generated,
        "tie_rule": comparison.tie_rule,
        "storage": public(stores.storage),
        "tracking_uri": public(stores.tracking_uri),
        "report": str(html),
        "optimizers": optimizers,
    }


def parent_metrics(r: OptimizerResult) -> dict[str, float]:
    """The summary an optimizer's parent run carries (the runs table shows them side by side)."""
    metrics: dict[str, float | None] = {
        "best_val_accuracy": r.best_val_accuracy,
        "train_seconds": r.train_seconds,
        **{f"trials_{k}": v for k, v in r.counts.items()},
    }
    if r.test is not None:
        metrics.update(test_accuracy_mean=r.test.mean, reeval_seeds=r.test.n)
        if r.test.n > 1:
            metrics["test_accuracy_std"] = r.test.std
        if r.test.spread_measured:  # a zero-width interval is no measurement: left out, not logged as certainty
            metrics.update(test_accuracy_ci95_low=r.test.ci_low, test_accuracy_ci95_high=r.test.ci_high)
    if r.budget is not None and r.budget.share_within_2pct is not None:
        metrics["share_within_2pct"] = r.budget.share_within_2pct
    return {k: float(v) for k, v in metrics.items() if v is not None}


def sweep_metrics(comparison: Comparison) -> dict[str, float]:
    """The report run's few sweep-level metrics. Each optimizer's summary is on its parent run only
    (``parent_metrics``): copied here as ``adam.test_accuracy_ci95_high`` and the like, it opened
    MLflow's chart view on ~20 single-bar charts above the training curves."""
    tested = [r for r in comparison.results if r.test is not None]
    searched = [r.best_val_accuracy for r in comparison.results if r.best_val_accuracy is not None]
    metrics = {"best_test_accuracy_mean": tested[0].test.mean if tested else None}
    metrics["best_val_accuracy"] = max(searched) if searched else None
    return {k: float(v) for k, v in metrics.items() if v is not None}


def publish(
    tracker, comparison: Comparison, folder: Path, markdown: str, final: bool, artifacts: str | None = None
) -> str:
    """The report as artifacts of the sweep-level run (``report/report.html`` opens in the MLflow
    UI's artifact viewer) with a few sweep-level metrics, and each optimizer's summary, best trial
    and model on its parent (once: not again on the report run)."""
    from sweep.report.files import ranking_rows
    from sweep.stores import tracking

    ties = {row.optimizer: row.tie_label() for row in ranking_rows(comparison)}
    run_id = tracker.sweep_run()
    exp = tracker.experiment_id
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    where = tracking.artifact_uri(tracker.uri, run_id, artifacts)
    get_artifact_repository(where, tracking_uri=tracker.uri).log_artifacts(str(folder), REPORT_ARTIFACTS)
    link = f"#/experiments/{exp}/runs/{run_id}/artifacts/{REPORT_ARTIFACTS}/report.html"
    tracker.describe(
        run_id,
        sweep_metrics(comparison),
        {},
        f"Sweep {comparison.name!r} ({comparison.state}): "
        f"[the report]({link})\n\n{markdown}\n\n{comparison.tie_rule}\n",
        final,
    )
    for r in comparison.results:
        parent = tracker.find_parent(r.optimizer)
        if parent is None:
            continue
        tags = {
            Tag.BEST_RUN: r.best_run_id or "",
            Tag.MODEL_URI: r.model_uri or "",
            Tag.TIED: ties[r.optimizer],  # the ranking table's tie cell, word for word
        }
        best = f"[trial {r.best_trial}](#/experiments/{exp}/runs/{r.best_run_id})" if r.best_run_id else "none yet"
        model = f"\n\nBest re-evaluated model: `{r.model_uri}`" if r.model_uri else ""
        tracker.describe(
            parent,
            parent_metrics(r),
            {k: v for k, v in tags.items() if v},
            f"**{r.optimizer}**: best configuration {best}{model}. Every optimizer ([report]({link})):\n\n{markdown}\n",
            final,
        )
    return run_id


def best_of(summary: dict[str, Any] | None) -> str:
    """``optimizer: val acc`` of the best optimizer in a summary.json, or ''."""
    if not summary:
        return ""
    scored = [
        (r["best_val_accuracy"], o) for o, r in summary["optimizers"].items() if r["best_val_accuracy"] is not None
    ]
    if not scored:
        return ""
    value, name = max(scored)
    return f"{name}: {value:.4f}"


def list_sweeps(output_dir: str | Path) -> str:
    """The ``sweep ls`` table (reads files only: no store, no heavy import)."""
    from sweep.stores.sweepdir import list_sweeps as sweeps_under

    sweeps = sweeps_under(output_dir)
    if not sweeps:
        return f"no sweeps under {Path(output_dir).resolve()}"
    lines = [f"{'name':<24} {'state':<12} {'optimizers':<10} {'trials':>7}  best (optimizer: val acc)"]
    for sweep_dir in sweeps:
        damaged = inspect(sweep_dir, thorough=False)  # a damaged sweep is one marked row, not a failed listing
        if damaged:
            lines.append(f"{sweep_dir.name:<24} {'damaged':<12} {'-':<10} {'-':>7}  {damaged[0].line()}")
            continue
        saved = sweep_dir.saved_config() or {}
        lines.append(
            f"{sweep_dir.name:<24} {sweep_dir.state():<12} {len(saved.get('optimizers', [])):<10} "
            f"{saved.get('trials', '-'):>7}  {_best_or_why(sweep_dir)}"
        )
    return "\n".join(lines)


def _best_or_why(sweep_dir) -> str:
    """The best result of summary.json; a damaged one is said, the stores still hold the results."""
    try:
        return best_of(sweep_dir.summary())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"summary.json unreadable ({type(exc).__name__}); rebuild it: sweep report {sweep_dir.name}"
