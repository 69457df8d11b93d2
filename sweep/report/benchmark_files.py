"""A benchmark report's files (``benchmark.html``, ``profile.png``, ``front.png``, ``scores.csv``,
``workloads.csv``, ``trials.csv``, ``benchmark.md``, ``summary.json`` beside the folder) and its MLflow run.

The page embeds its images (it opens the same from disk or MLflow's artifact viewer), and every
value is rendered from one row list per table, so HTML, Markdown and CSV agree.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from pathlib import Path

from sweep.core.credentials import is_server
from sweep.core.keys import Tag
from sweep.report import benchmark_plots
from sweep.report.benchmark import BenchmarkReport, Row
from sweep.report.files import STYLE, params_text

SCORE_COLUMNS = ("rank", "optimizer", "score", "95 % interval (bootstrap over studies)", "workloads reached")
WORKLOAD_COLUMNS = (
    "optimizer",
    "median time to target (s)",
    "studies' times (s)",
    "reached",
    "median steps",
    "median images",
    "test accuracy (mean ± std over studies)",
    "trials by status",
    "fastest trial's hyperparameters",
)
FIGURES = {
    "profile": "Performance profiles: the share of workloads each optimizer reached its target within τ "
    "times the fastest optimizer's time (higher and further left is better).",
    "front": "Accuracy-compute fronts: per workload, each optimizer's trials that no other of its trials beats "
    "on both best validation accuracy and training seconds.",
}
READING = (
    "Time to target is the training time (evaluation excluded) at the first validation evaluation that "
    "reached the workload's target; a study's time is its fastest trial's, an optimizer's time on a "
    "workload the median over its studies (infinite when half or more never reached it). A profile at τ is "
    "the share of workloads the optimizer reached within τ times the fastest optimizer's time; the score "
    "is the area under it on [1, r_max] divided by r_max - 1 (1: fastest everywhere; 0: never within r_max). "
    "The interval resamples each optimizer's studies with replacement; with one study it has no width to "
    "measure and says so."
)


def _seconds(value: float) -> str:
    return "never" if not math.isfinite(value) else f"{value:.2f}"


def _interval(report: BenchmarkReport, opt: str) -> str:
    low, high = report.intervals[opt]
    if report.studies < 2:
        return f"not measured: {report.studies} study per workload"
    return f"{low:.3f} – {high:.3f}"


def score_rows(report: BenchmarkReport) -> list[dict[str, str]]:
    workloads = list(report.targets)
    return [
        {
            "rank": str(report.ranks[opt]),
            "optimizer": opt,
            "score": f"{report.scores[opt]:.3f}",
            SCORE_COLUMNS[3]: _interval(report, opt),
            "workloads reached": f"{sum(math.isfinite(report.row(w, opt).median_seconds) for w in workloads)}"
            f"/{len(workloads)}",
        }
        for opt in report.ranked()
    ]


def _test(row: Row) -> str:
    if row.test_mean is None:
        return "-"
    if row.test_std is None:
        return f"{row.test_mean:.4f} (1 study: no spread)"
    return f"{row.test_mean:.4f} ± {row.test_std:.4f}"


def workload_rows(report: BenchmarkReport, workload: str) -> list[dict[str, str]]:
    rows = sorted((r for r in report.rows if r.workload == workload), key=lambda r: (r.median_seconds, r.optimizer))
    return [
        {
            "optimizer": r.optimizer,
            "median time to target (s)": _seconds(r.median_seconds),
            "studies' times (s)": ", ".join(_seconds(t) for t in r.study_times),
            "reached": f"{r.reached}/{len(r.study_times)}",
            "median steps": "-" if r.median_steps is None else f"{r.median_steps:.0f}",
            "median images": "-" if r.median_images is None else f"{r.median_images:.0f}",
            "test accuracy (mean ± std over studies)": _test(r),
            "trials by status": ", ".join(f"{n} {s.value}" for s, n in r.counts.items() if n),
            "fastest trial's hyperparameters": params_text(r.fastest.hyperparameters) if r.fastest else "-",
        }
        for r in rows
    ]


def trial_rows(report: BenchmarkReport) -> list[dict[str, object]]:
    return [
        {
            "workload": r.workload,
            "optimizer": r.optimizer,
            "study": r.study,
            "trial": r.number,
            "outcome": r.status.value,
            "best_val_accuracy": r.best_val,
            "train_seconds": r.train_seconds,
            "time_to_target_s": r.reached.seconds if r.reached else "",
            "steps_to_target": r.reached.steps if r.reached else "",
            "images_to_target": r.reached.images if r.reached else "",
            "test_accuracy": r.metrics.get("test_accuracy", ""),
            "configuration": params_text(r.hyperparameters),
            "mlflow_run": r.run_id or "",
        }
        for r in report.records
    ]


def _csv(rows: list[dict], columns) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _md_table(rows: list[dict[str, str]], columns) -> list[str]:
    def cell(text: str) -> str:
        return html.escape(str(text), quote=False).replace("|", "\\|")

    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows),
    ]


def _html_table(rows: list[dict[str, str]], columns) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{e(str(r[c]))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def facts(report: BenchmarkReport) -> list[tuple[str, str]]:
    return [
        ("ruleset", report.ruleset),
        ("workloads", ", ".join(report.targets)),
        ("studies per workload and optimizer", str(report.studies)),
        ("trials per study", "1 (defaults, no search)" if report.ruleset == "self" else str(report.trials)),
        ("r_max", f"{report.r_max:g}"),
        ("state", report.state),
        ("generated", report.generated),
    ]


def markdown(report: BenchmarkReport) -> str:
    lines = [f"# Benchmark {report.name}", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts(report)]
    lines += ["", "## Score", "", *_md_table(score_rows(report), SCORE_COLUMNS), ""]
    for w, goal in report.targets.items():
        lines += [f"## {w}: target {goal.text()}", "", *_md_table(workload_rows(report, w), WORKLOAD_COLUMNS), ""]
    lines += ["## Figures", "", "![profile](profile.png)", "", "![front](front.png)", "", READING, ""]
    return "\n".join(lines)


def page(report: BenchmarkReport, pngs: dict[str, Path]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Benchmark {e(report.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Benchmark {e(report.name)}</h1>",
        '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts(report)) + "</dl>",
        "<h2>Score</h2>",
        _html_table(score_rows(report), SCORE_COLUMNS),
    ]
    for name, path in pngs.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        out.append(
            f'<figure><img id="fig-{name}" alt="{e(FIGURES[name])}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(FIGURES[name])}</figcaption></figure>"
        )
    for w, goal in report.targets.items():
        out += [f"<h2>{e(w)}: target {e(goal.text())}</h2>", _html_table(workload_rows(report, w), WORKLOAD_COLUMNS)]
    out += ["<h2>How to read it</h2>", f"<p>{e(READING)}</p>", "</body></html>"]
    return "\n".join(out) + "\n"


def _write(path: Path, text: str) -> None:
    """Whole or not at all: MLflow's upload never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write(report: BenchmarkReport, folder: Path) -> Path:
    """Write the report's files into ``folder`` and ``summary.json`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    pngs = {
        "profile": benchmark_plots.profile_figure(
            dict(report.profile),
            list(report.taus),
            folder / "profile.png",
            report.r_max,
            f"Benchmark {report.name} ({report.ruleset}): {len(report.targets)} workloads",
        ),
        "front": benchmark_plots.front_figure(
            {
                w: {o: [(r.train_seconds, r.best_val) for r in trials] for o, trials in per.items()}
                for w, per in report.fronts.items()
            },
            folder / "front.png",
        ),
    }
    _write(folder / "benchmark.html", page(report, pngs))
    _write(folder / "benchmark.md", markdown(report))
    _write(folder / "scores.csv", _csv(score_rows(report), SCORE_COLUMNS))
    _write(
        folder / "workloads.csv",
        _csv(
            [{"workload": w, **r} for w in report.targets for r in workload_rows(report, w)],
            ("workload", *WORKLOAD_COLUMNS),
        ),
    )
    trials = trial_rows(report)
    _write(folder / "trials.csv", _csv(trials, trials[0].keys() if trials else ("workload",)))
    _write(folder.parent / "summary.json", json.dumps(summary(report), indent=2))
    return folder


def summary(report: BenchmarkReport) -> dict:
    def finite(x):
        return x if x is not None and math.isfinite(x) else None

    return {
        "name": report.name,
        "kind": "benchmark",
        "ruleset": report.ruleset,
        "state": report.state,
        "r_max": report.r_max,
        "targets": {
            w: {"target": g.target.text(), "value": g.value, "best": g.best} for w, g in report.targets.items()
        },
        "scores": {
            o: {"score": report.scores[o], "rank": report.ranks[o], "interval": list(report.intervals[o])}
            for o in report.ranked()
        },
        "median_seconds_to_target": {
            w: {r.optimizer: finite(r.median_seconds) for r in report.rows if r.workload == w} for w in report.targets
        },
    }


def publish(report: BenchmarkReport, folder: Path, bench, bench_id: str) -> str:
    """The report as artifacts of a run in the benchmark's own experiment (named as the benchmark),
    with one description that links each child sweep's experiment; no per-optimizer metrics (their
    numbers sit in the tables, and a chart per number would bury the training curves)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from sweep.core.errors import store_calls
    from sweep.stores import tracking
    from sweep.stores.finish import MLFLOW
    from sweep.stores.sweepdir import SweepDir

    uri = bench.base.tracking_uri
    local = not is_server(uri)
    artifacts = SweepDir(bench.path).artifacts
    with store_calls(MLFLOW):
        tracker = tracking.SweepTracker(uri, bench.name, artifacts if local else None, bench_id)
        run_id = tracker.sweep_run()
        where = tracking.artifact_uri(uri, run_id, str(artifacts) if local else None)
        get_artifact_repository(where, tracking_uri=uri).log_artifacts(str(folder), "report")
        exp = tracker.experiment_id
        link = f"#/experiments/{exp}/runs/{run_id}/artifacts/report/benchmark.html"
        table = "\n".join(_md_table(score_rows(report), SCORE_COLUMNS))
        tracker.describe(
            run_id,
            {},
            {Tag.ROLE: tracking.SWEEP_ROLE},
            f"Benchmark {report.name!r} ({report.ruleset}, {report.state}): [the report]({link})\n\n{table}\n",
            report.state == "finished",
        )
    return run_id
