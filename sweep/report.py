"""End-of-sweep comparison (JSON, CSV, Markdown, MLflow) and ``sweep ls``.

All figures are read back from the Optuna studies, the source of truth, through the one outcome
classifier, so a resumed sweep's report covers every trial it ever ran, and the counts match the
live view's.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sweep.outcome import Status, Tally

COLUMNS = ("optimizer", "best_val_accuracy", "test_accuracy", *(s.value for s in Status), "train_seconds",
           "best_params")


@dataclass(frozen=True)
class OptimizerRow:
    """One optimizer's line of the comparison."""

    optimizer: str
    best_val_accuracy: float | None
    test_accuracy: float | None
    best_trial: int | None
    best_params: dict[str, Any] = field(default_factory=dict)        # as the optimizer takes them
    best_optuna_params: dict[str, Any] = field(default_factory=dict)  # as Optuna searched them
    counts: dict[str, int] = field(default_factory=dict)              # per status
    train_seconds: float = 0.0

    def cells(self) -> dict[str, Any]:
        return {**asdict(self), **self.counts}


def summarize(optimizer: str, study) -> OptimizerRow:
    outcomes = study.outcomes()
    tally = Tally.of(0, outcomes)
    best = study.record(tally.best_number) if tally.best_number is not None else None
    return OptimizerRow(
        optimizer=optimizer,
        best_val_accuracy=tally.best,
        test_accuracy=best.user_attrs.get("final_test_accuracy") if best else None,
        best_trial=tally.best_number,
        best_params=best.user_attrs.get("hyperparameters", best.params) if best else {},
        best_optuna_params=dict(best.params) if best else {},
        counts={s.value: n for s, n in tally.counts.items()},
        train_seconds=round(sum(o.metrics.get("train_seconds", 0.0) for o in outcomes), 2))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v) if not isinstance(v, float) else f'{v:.3g}'}" for k, v in value.items())
    return str(value)


def markdown_table(rows: list[OptimizerRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row.cells().get(c)) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def csv_table(rows: list[OptimizerRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row.cells(), "best_params": json.dumps(row.best_params)})
    return out.getvalue()


def write(cfg, stores, sweep_dir, studies: dict, tracker, parents: dict[str, str]) -> list[OptimizerRow]:
    from sweep.credentials import public

    rows = [summarize(opt, study) for opt, study in studies.items()]
    md = markdown_table(rows)
    summary = {"name": cfg.name, "dataset": cfg.dataset, "model": cfg.model, "epochs": cfg.epochs,
               "trials_per_optimizer": cfg.trials, "storage": public(stores.storage),
               "tracking_uri": public(stores.tracking_uri), "optimizers": {r.optimizer: r.cells() for r in rows}}
    sweep_dir.write_results(summary, md, csv_table(rows))
    for row in rows:
        metrics = {"best_val_accuracy": row.best_val_accuracy, "test_accuracy": row.test_accuracy,
                   "train_seconds": row.train_seconds, **{f"trials_{k}": v for k, v in row.counts.items()}}
        tracker.finish_parent(parents[row.optimizer], {k: v for k, v in metrics.items() if v is not None},
                              f"Sweep {cfg.name!r}: every optimizer\n\n{md}\n")
    return rows


def best_of(summary: dict[str, Any] | None) -> str:
    """``optimizer: val acc`` of the best optimizer in a summary.json, or ''."""
    if not summary:
        return ""
    scored = [(r["best_val_accuracy"], o) for o, r in summary["optimizers"].items() if r["best_val_accuracy"] is not None]
    if not scored:
        return ""
    value, name = max(scored)
    return f"{name}: {value:.4f}"


def list_sweeps(output_dir: str | Path) -> str:
    """The ``sweep ls`` table (reads files only: no store, no heavy import)."""
    from sweep.sweepdir import list_sweeps as sweeps_under

    sweeps = sweeps_under(output_dir)
    if not sweeps:
        return f"no sweeps under {Path(output_dir).resolve()}"
    lines = [f"{'name':<24} {'state':<12} {'optimizers':<10} {'trials':>7}  best (optimizer: val acc)"]
    for sweep_dir in sweeps:
        saved = sweep_dir.saved_config() or {}
        lines.append(f"{sweep_dir.name:<24} {sweep_dir.state():<12} {len(saved.get('optimizers', [])):<10} "
                     f"{saved.get('trials', '-'):>7}  {best_of(sweep_dir.summary())}")
    return "\n".join(lines)
