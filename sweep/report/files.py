"""The report's files, from a ``Comparison`` only: one self-contained HTML page, the PNGs, a CSV and
a Markdown table.

The page embeds its images as ``data:`` URIs and its style inline, so it reads the same opened from
disk or from MLflow's artifact viewer, where links to sibling files break. Every string that comes
from the data is escaped (HTML, and Markdown, which passes HTML through). The ranking table's rows
are built once (``ranking_rows``) and rendered three ways, so CSV, Markdown and HTML agree.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.core.credentials import redact
from sweep.core.outcome import Status
from sweep.report import pareto, plots
from sweep.report.comparison import Comparison, OptimizerResult, SeedStats
from sweep.report.stats import MIN_TIE_SEEDS

NOT_TESTED = "-"  # not re-evaluated yet
TOO_FEW = "n/a"  # re-evaluated, but with fewer seeds than the tie test needs (stats.MIN_TIE_SEEDS)
TOP, TIED = "best", "not distinguishable"
CSV_COLUMNS = (
    "rank",
    "optimizer",
    "test_mean",
    "test_std",
    "ci95_low",
    "ci95_high",
    "seeds",
    "tied",
    "p_value",
    "best_val_accuracy",
    "trials_to_1pct",
    "share_within_2pct",
    *(s.value for s in Status),
    "train_seconds",
    "best_params",
)
TABLE_COLUMNS = (
    "rank",
    "optimizer",
    "test accuracy",
    "95 % CI",
    "seeds",
    "tied",
    "best val (search)",
    "trials to within 1 %",
    "share within 2 %",
    "trials by status",
    "train s",
    "best hyperparameters",
)

MEASURED = (
    "Each optimizer's Optuna study searched its hyperparameters with the same budget ({trials} trials) "
    "and the same sampler seed, scoring every trial on the validation split after {epochs} epochs. "
    "Its best configuration was then trained again with {seeds} fresh seeds and scored on the held-out "
    "test set: the ranking is by the mean of those test accuracies (95 % interval: Student's t), never "
    "by the single best search trial. An optimizer whose seeds Welch's t-test cannot tell from the first "
    "is marked not distinguishable (which is not proof of equal means); with fewer than {min_seeds} seeds no "
    "test is made. "
    "The budget curves are the exact expectation over random orders of the trials that ran, not a resampling; "
    "a pruned, diverged or failed trial counts in them as accuracy 0."
)


@dataclass(frozen=True)
class RankingRow:
    """One optimizer's line of the ranking, as values; ``record`` and ``display`` render it."""

    rank: int | None  # by mean test accuracy; None until re-evaluated
    optimizer: str
    test: SeedStats | None
    tie: str  # TOP, TIED, "" (distinguishable: worse), TOO_FEW or NOT_TESTED
    p_value: float | None
    best_val_accuracy: float | None
    trials_to_1pct: int | None
    share_within_2pct: float | None
    counts: Mapping[str, int]
    train_seconds: float
    best_hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    top_seeds: int = 0  # the top-ranked optimizer's seeds: the other side of the tie test

    def record(self) -> dict[str, str]:
        """CSV cells: plain numbers (accuracies to 4 decimals), '' for none; no interval where the
        seeds measured no spread (a zero-width one would read as certainty)."""
        t = self.test
        interval = t if t is not None and t.spread_measured else None
        return {
            "rank": _or(self.rank, str, ""),
            "optimizer": self.optimizer,
            "test_mean": _or(t and t.mean, _acc, ""),
            "test_std": _or(t.std if t is not None and t.n > 1 else None, _acc, ""),
            "ci95_low": _or(interval and interval.ci_low, _acc, ""),
            "ci95_high": _or(interval and interval.ci_high, _acc, ""),
            "seeds": str(t.n) if t else "0",
            "tied": self.tie,
            "p_value": _or(self.p_value, _p, ""),
            "best_val_accuracy": _or(self.best_val_accuracy, _acc, ""),
            "trials_to_1pct": _or(self.trials_to_1pct, str, ""),
            "share_within_2pct": _or(self.share_within_2pct, _acc, ""),
            **{s.value: str(self.counts.get(s.value, 0)) for s in Status},
            "train_seconds": f"{self.train_seconds:.1f}",
            "best_params": json.dumps(dict(self.best_hyperparameters), default=str),
        }

    def display(self) -> dict[str, str]:
        """Markdown / HTML cells (unescaped): mean ± std, the interval, the tie with its p-value."""
        t = self.test
        return {
            "rank": _or(self.rank, str, "-"),
            "optimizer": self.optimizer,
            "test accuracy": _accuracy_text(t),
            "95 % CI": _interval_text(t),
            "seeds": str(t.n) if t else "0",
            "tied": self.tie_label(),
            "best val (search)": _or(self.best_val_accuracy, _acc, "-"),
            "trials to within 1 %": _or(self.trials_to_1pct, str, "-"),
            "share within 2 %": _or(self.share_within_2pct, lambda s: f"{100 * s:.0f} %", "-"),
            "trials by status": ", ".join(
                f"{self.counts[s.value]}\u00a0{s.value}" for s in Status if self.counts.get(s.value)
            )
            or "none",
            "train s": f"{self.train_seconds:.1f}",
            "best hyperparameters": params_text(self.best_hyperparameters),
        }

    def tie_label(self) -> str:
        """The tie cell, which says how much the test could see: 'not distinguishable with 3 seeds
        (p = 0.41)', 'no (p = 0.003)', 'n/a: 2 seeds (< 3)'."""
        p = f" (p = {_p(self.p_value)})" if self.p_value is not None else ""
        own = self.test.n if self.test is not None else 0
        if self.tie == TIED:
            seeds = f"{own} seeds" if own == self.top_seeds else f"{own} and {self.top_seeds} seeds"
            return f"{TIED} with {seeds}{p}"
        if self.tie == "":
            return f"no{p}"
        if self.tie == TOO_FEW:
            few = f"{own} seeds" if own < MIN_TIE_SEEDS else f"best has {self.top_seeds} seeds"
            return f"{TOO_FEW}: {few} (< {MIN_TIE_SEEDS})"
        return self.tie


def _accuracy_text(t: SeedStats | None) -> str:
    """Mean ± std; without a measured spread, why there is none instead of '± 0.0000'."""
    if t is None:
        return "-"
    if t.spread_measured:
        return f"{_acc(t.mean)} ± {_acc(t.std)}"
    return f"{_acc(t.mean)} (1 seed)" if t.n == 1 else f"{_acc(t.mean)} (no spread)"


def _interval_text(t: SeedStats | None) -> str:
    """The 95 % interval; never a zero-width one, which would read as certainty."""
    if t is None:
        return "-"
    if t.spread_measured:
        return f"{_acc(t.ci_low)} – {_acc(t.ci_high)}"
    return "– (1 seed)" if t.n == 1 else f"– ({t.n} identical seeds)"


def _or(value, fmt, none: str) -> str:
    return none if value is None else fmt(value)


def _acc(value: float) -> str:
    return f"{value:.4f}"


def _p(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def params_text(params: Mapping[str, Any]) -> str:
    """``lr=0.0866 schedule=step step.gamma=0.733``: floats to 3 significant digits."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _tie(result: OptimizerResult, top: OptimizerResult | None) -> str:
    if result.test is None:
        return NOT_TESTED
    if result is top:
        return TOP
    if result.tied is None:
        return TOO_FEW
    return TIED if result.tied else ""


def ranking_rows(comparison: Comparison) -> list[RankingRow]:
    """The ranking, in the comparison's order: re-evaluated optimizers ranked by mean test accuracy."""
    tested = [r for r in comparison.results if r.test is not None]
    top = tested[0] if tested else None
    return [
        RankingRow(
            rank=tested.index(r) + 1 if r.test is not None else None,
            optimizer=r.optimizer,
            test=r.test,
            tie=_tie(r, top),
            p_value=r.p_value,
            best_val_accuracy=r.best_val_accuracy,
            trials_to_1pct=r.budget.trials_to_1pct if r.budget else None,
            share_within_2pct=r.budget.share_within_2pct if r.budget else None,
            counts=r.counts,
            train_seconds=r.train_seconds,
            best_hyperparameters=r.best_hyperparameters,
            top_seeds=top.test.n if top is not None and top.test is not None else 0,
        )
        for r in comparison.results
    ]


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote, all in ``folder``."""

    folder: Path
    html: Path
    csv: Path
    markdown: Path
    plots: Mapping[str, Path]  # figure name -> PNG (only the figures with something to draw)


def write_report(comparison: Comparison, folder: str | Path, figures: bool = True) -> ReportFiles:
    """Write ``report.html``, the PNGs, ``comparison.csv`` and ``comparison.md`` into ``folder``.
    ``figures=False`` draws none (seconds saved; the page says how to get them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):  # figures of an earlier build that this one may not draw
        stale.unlink()
    pngs = plots.write_plots(comparison, folder) if figures else {}
    rows = ranking_rows(comparison)
    files = ReportFiles(folder, folder / "report.html", folder / "comparison.csv", folder / "comparison.md", pngs)
    _write(files.csv, csv_text(rows))
    _write(files.markdown, markdown_text(comparison, rows, pngs))
    _write(files.html, html_page(comparison, rows, pngs, figures))
    return files


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a reader (MLflow's artifact upload) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def csv_text(rows: list[RankingRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.record() for row in rows)
    return out.getvalue()


def _state_line(comparison: Comparison) -> str:
    if comparison.state == "finished":
        return "finished"
    return f"{comparison.state}: partial results, the sweep has not finished"


def _facts(comparison: Comparison) -> list[tuple[str, str]]:
    facts = [
        ("dataset", comparison.dataset),
        ("model", comparison.model),
        ("epochs", str(comparison.epochs)),
        ("trials per optimizer", str(comparison.trials)),
        ("re-evaluation seeds", str(comparison.reeval_seeds)),
    ]
    if comparison.batch_sizes:
        facts.append(("batch sizes", ", ".join(map(str, comparison.batch_sizes))))
    return facts + [("state", _state_line(comparison)), ("generated", comparison.generated)]


def _tie_sentence(comparison: Comparison) -> str:
    rule = comparison.tie_rule.rstrip(".")
    return f"{rule[:1].upper()}{rule[1:]}."


NO_RESULTS = "No results yet: no optimizer has a finished trial."


def _md(text: str) -> str:
    """A Markdown table cell: HTML escaped (Markdown renders raw HTML), pipes and newlines defused."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _table_lines(rows: list[RankingRow]) -> list[str]:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    return lines + ["| " + " | ".join(_md(row.display()[c]) for c in TABLE_COLUMNS) + " |" for row in rows]


def markdown_table(comparison: Comparison) -> str:
    """The ranking as a Markdown table (what `sweep run` prints at the end)."""
    rows = ranking_rows(comparison)
    return "\n".join(_table_lines(rows)) if rows else NO_RESULTS


TERMINAL_WIDTH = 100  # `sweep run` and `sweep report` print the ranking within this many columns


@dataclass(frozen=True)
class _Column:
    """A column of the terminal's ranking: its header, its cell from a row and its ``display()``,
    right-aligned or not."""

    header: str
    cell: Callable[[RankingRow, dict[str, str]], str]
    right: bool = False


def _compact_tie(row: RankingRow, shown: dict[str, str]) -> str:
    """'not dist. p=0.410', 'no p=0.003', 'n/a (2 seeds)': the table's words, shorter."""
    p = f" p={_p(row.p_value)}" if row.p_value is not None else ""
    if row.tie == TIED:
        return f"not dist.{p}"
    if row.tie == "":
        return f"no{p}"
    if row.tie == TOO_FEW:
        return f"{TOO_FEW} ({min(row.test.n if row.test else 0, row.top_seeds)} seeds)"
    return row.tie


_SHORT_STATUS = {Status.DIVERGED: "div", Status.INTERRUPTED: "intr"}


def _compact_counts(row: RankingRow, shown: dict[str, str]) -> str:
    return (
        ", ".join(f"{row.counts[s.value]} {_SHORT_STATUS.get(s, s.value)}" for s in Status if row.counts.get(s.value))
        or "none"
    )


_TERMINAL_COLUMNS = (
    _Column("rank", lambda r, d: d["rank"], right=True),
    _Column("optimizer", lambda r, d: d["optimizer"]),
    _Column("test accuracy", lambda r, d: d["test accuracy"]),
    _Column("tied", _compact_tie),
    _Column("best val", lambda r, d: d["best val (search)"], right=True),
    _Column("trials", _compact_counts),
    _Column("hyperparams", lambda r, d: d["best hyperparameters"]),
)
# When a table is too wide, columns are cut down to these widths, in this order, until it fits.
_GIVES_WAY = (
    ("hyperparams", 16),
    ("optimizer", 10),
    ("trials", 14),
    ("hyperparams", 10),
    ("tied", 4),
    ("optimizer", 6),
    ("trials", 8),
)
_GAP = "  "


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def terminal_table(comparison: Comparison, width: int = TERMINAL_WIDTH) -> str:
    """The ranking as the terminal shows it: plain text, no line longer than ``width`` (rank,
    optimizer, test accuracy ± std, tie, best validation accuracy of the search, trials by status,
    best hyperparameters, cut with an ellipsis where they do not fit). The report's files keep the
    full table (comparison.md: the interval, seeds, budget figures, training time, every value)."""
    rows = ranking_rows(comparison)
    if not rows:
        return NO_RESULTS
    columns = {c.header: c for c in _TERMINAL_COLUMNS}
    table = [[c.cell(row, row.display()) for c in _TERMINAL_COLUMNS] for row in rows]
    widths = {h: max(len(h), *(len(cells[i]) for cells in table)) for i, h in enumerate(columns)}
    for header, narrowest in _GIVES_WAY:
        over = sum(widths.values()) + len(_GAP) * (len(widths) - 1) - width
        if over <= 0:
            break
        widths[header] = max(min(narrowest, widths[header]), widths[header] - over)

    def line(cells: list[str]) -> str:
        fitted = ((columns[h], _fit(cell, widths[h])) for h, cell in zip(columns, cells))
        return _GAP.join(
            cell.rjust(widths[c.header]) if c.right else cell.ljust(widths[c.header]) for c, cell in fitted
        ).rstrip()

    return "\n".join([line(list(columns)), *(line(cells) for cells in table)])


def markdown_text(comparison: Comparison, rows: list[RankingRow], pngs: Mapping[str, Path]) -> str:
    lines = [f"# Sweep {_md(comparison.name)}", ""]
    lines += [f"- **{k}**: {_md(v)}" for k, v in _facts(comparison)]
    lines.append("")
    if not rows:
        lines += [NO_RESULTS, ""]
    else:
        lines += _table_lines(rows)
        lines += ["", _md(_tie_sentence(comparison)), ""]
    lines += pareto.markdown(comparison, _md)  # a multi-objective search's Pareto sets
    for name in pngs:
        lines += [f"![{name}]({name}.png)", "", _md(plots.FIGURES[name].caption), ""]
    if note := _importances_left_out(comparison, pngs):
        lines += [_md(note), ""]
    return "\n".join(lines)


def _importances_left_out(comparison: Comparison, pngs: Mapping[str, Path]) -> str:
    """Why the importances figure is missing when every optimizer had too few finished trials
    (the figure names them itself when it is drawn); '' otherwise."""
    note = plots.importance_note(comparison)
    return f"Parameter importances: not drawn. {note}" if note and pngs and "importances" not in pngs else ""


STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1200px; margin: 1.5em auto; padding: 0 1em; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
.partial { background: #fff3cd; border: 1px solid #e0c36c; padding: .4em .7em; border-radius: 4px; }
.table { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { border: 1px solid #ddd; padding: .25em .4em; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; white-space: normal; vertical-align: bottom; font-weight: 600; }
th.text, td.text { text-align: left; }
td.params { white-space: normal; font-size: 12px; }
tr.top td { background: #e3f1e3; font-weight: 600; }
tr.tied td { background: #eef7ee; }
.note { color: #555; font-size: 13px; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 14px; }
"""


def html_page(comparison: Comparison, rows: list[RankingRow], pngs: Mapping[str, Path], figures: bool = True) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Sweep {e(comparison.name)}: optimizer comparison</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        f"<h1>Sweep {e(comparison.name)}</h1>",
    ]
    if comparison.state != "finished":
        out.append(
            f'<p class="partial">{e(_state_line(comparison))}; this page shows what had finished '
            f"when it was generated.</p>"
        )
    out.append(
        '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _facts(comparison)) + "</dl>"
    )
    if comparison.settings:
        out.append(
            '<details><summary>settings</summary><dl class="facts">'
            + "".join(f"<dt>{e(str(k))}</dt><dd>{e(redact(_setting(v)))}</dd>" for k, v in comparison.settings.items())
            + "</dl></details>"
        )
    out.append("<h2>Ranking</h2>")
    if not rows:
        out.append(f"<p>{e(NO_RESULTS)}</p>")
    else:
        out.append(_html_table(rows))
        out.append(
            f'<p class="note">{e(_tie_sentence(comparison))} Highlighted rows are the best '
            f"and those not distinguishable from it; &ldquo;-&rdquo;: not re-evaluated yet, so neither ranked "
            f"nor tested; &ldquo;n/a&rdquo;: too few seeds to test.</p>"
        )
    if rows:  # a multi-objective search's Pareto sets, then the figures
        out += [*pareto.html_section(comparison), "<h2>Figures</h2>"]
        if not figures:
            out.append(
                f"<p>Not drawn (report_figures=false); <code>sweep report {e(comparison.name)}</code> draws them.</p>"
            )
        elif not pngs:
            out.append("<p>No figures yet: nothing has been reported to draw.</p>")
    for name, path in pngs.items():
        spec = plots.FIGURES[name]
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        out.append(
            f'<figure><img id="fig-{e(name)}" alt="{e(spec.alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(spec.caption)}</figcaption></figure>"
        )
    if note := _importances_left_out(comparison, pngs):
        out.append(f'<p class="note">{e(note)}</p>')
    out += ["<h2>How this was measured</h2>", f"<p>{e(_measured(comparison))}</p>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _measured(comparison: Comparison) -> str:
    return MEASURED.format(
        trials=comparison.trials, epochs=comparison.epochs, seeds=comparison.reeval_seeds, min_seeds=MIN_TIE_SEEDS
    )


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _html_table(rows: list[RankingRow]) -> str:
    e = html.escape
    classes = {
        "optimizer": "text",
        "tied": "text",
        "trials by status": "text params",
        "best hyperparameters": "text params",
    }
    head = "".join(
        (f'<th class="{classes[c]}">' if c in classes else "<th>") + e(c).replace(" %", "&nbsp;%") + "</th>"
        for c in TABLE_COLUMNS
    )
    body = []
    for row in rows:
        cells = row.display()
        klass = {TOP: ' class="top"', TIED: ' class="tied"'}.get(row.tie, "")
        body.append(
            f"<tr{klass}>"
            + "".join(
                f'<td class="{classes[c]}">{e(cells[c])}</td>' if c in classes else f"<td>{e(cells[c])}</td>"
                for c in TABLE_COLUMNS
            )
            + "</tr>"
        )
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>' + "".join(body) + "</tbody></table></div>"
