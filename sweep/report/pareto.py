"""The report's Pareto sets, for a multi-objective search (``objectives=[val_accuracy,train_seconds]``):
read from each optimizer's study, shown as a table (``comparison.md``, ``report.html``) and as
the ``pareto`` figure. A single-objective sweep has none, and its report shows nothing of this.

A trial is in its optimizer's Pareto set when no other trial of that search is at least as good
on every objective and better on one: Optuna's ``best_trials``, read as it is, so the table is
exactly the study's set. A diverged trial was told every objective's worst value, so it is in the
set only when no trial finished ok; the figure draws the trials that finished ok.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from sweep.core.keys import Attr
from sweep.core.objectives import OBJECTIVES, TRAIN_SECONDS, VAL_ACCURACY
from sweep.core.outcome import Status
from sweep.report.comparison import Comparison, ParetoFront, ParetoTrial
from sweep.stores.studies import SweepStudy, outcome_of, study_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "Pareto sets"
CONFIGURATION = "configuration"  # the table's column of each trial's hyperparameters
NOTE = (
    "Each optimizer's search trials that no other trial of its search beats on every objective "
    "(Optuna's best_trials), fastest first."
)
CAPTION = (
    "Every search trial that finished ok, by training seconds (x) and validation accuracy (y), one panel "
    "per optimizer: filled and numbered, its Pareto set joined by the front; hollow, the trials it dominates."
)
ALT = "Validation accuracy against training seconds of every trial, Pareto sets highlighted, per optimizer"


def fronts(cfg, stores) -> tuple[ParetoFront, ...]:
    """Each optimizer's Pareto set and the trials around it; () for a single-objective sweep."""
    if len(cfg.objectives) < 2:
        return ()
    found = []
    for opt in cfg.optimizers:
        search = SweepStudy.find(stores.storage, study_name(cfg.name, opt))
        if search is not None and search.multi_objective:
            found.append(front(opt, search))
    return tuple(found)


def front(optimizer: str, search: SweepStudy) -> ParetoFront:
    names = search.objectives
    best = {t.number for t in search.pareto()}
    trials = []
    for t in search.trials():
        outcome = outcome_of(t)
        ok = outcome is not None and outcome.status is Status.OK
        if (ok or t.number in best) and t.values:
            trials.append(
                ParetoTrial(
                    number=t.number,
                    values=dict(zip(names, t.values)),
                    hyperparameters=dict(t.user_attrs.get(Attr.HYPERPARAMETERS, t.params)),
                    ok=ok,
                    pareto=t.number in best,
                )
            )
    return ParetoFront(optimizer, names, tuple(trials))


# ---- the table ----


def _params(params) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows (plain text): every Pareto trial, per optimizer, fastest first."""
    shown = [f for f in comparison.pareto if f.best]
    names = shown[0].objectives if shown else ()
    header = ["optimizer", "trial", *(OBJECTIVES[n].label for n in names), CONFIGURATION]
    body = []
    for f in shown:
        for t in sorted(f.best, key=lambda t: (t.values.get(TRAIN_SECONDS.name, 0.0), t.number)):
            cells = [f"{t.values[n]:.{OBJECTIVES[n].digits}f}" for n in names]
            body.append([f.optimizer, str(t.number), *cells, _params(t.hyperparameters)])
    return header, body


def markdown(comparison: Comparison, cell: Callable[[str], str]) -> list[str]:
    """The section's Markdown lines, each cell through ``cell`` (the report's escaping); [] without one."""
    header, body = rows(comparison)
    if not body:
        return []
    lines = [f"## {TITLE}", "", NOTE, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in body] + [""]


def html_section(comparison: Comparison) -> list[str]:
    """The section's HTML; [] without one."""
    header, body = rows(comparison)
    if not body:
        return []
    e = html.escape
    text = ("optimizer", CONFIGURATION)
    head = "".join(f'<th class="text">{e(h)}</th>' if h in text else f"<th>{e(h)}</th>" for h in header)
    trs = "".join(
        "<tr>"
        + "".join(f'<td class="text">{e(c)}</td>' if h in text else f"<td>{e(c)}</td>" for h, c in zip(header, row))
        + "</tr>"
        for row in body
    )
    return [
        f"<h2>{e(TITLE)}</h2>",
        f'<div class="table"><table id="pareto"><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table></div>',
        f'<p class="note">{e(NOTE)}</p>',
    ]


# ---- the figure ----


def figure(comparison: Comparison) -> Figure | None:
    """Small multiples, one per optimizer with a trial that finished ok; None for a single-objective sweep."""
    drawn = [f for f in comparison.pareto if any(t.ok for t in f.trials)]
    if not drawn:
        return None
    from matplotlib.figure import Figure

    from sweep.report.plots import DPI, PANEL_HEIGHT, WIDTH, colors  # plots lists this figure

    cols = min(3, len(drawn))
    fig = Figure(figsize=(WIDTH, PANEL_HEIGHT * math.ceil(len(drawn) / cols) + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(math.ceil(len(drawn) / cols), cols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[len(drawn) :]:
        ax.remove()
    palette = colors(f.optimizer for f in drawn)
    x, y = TRAIN_SECONDS.name, VAL_ACCURACY.name
    for ax, f in zip(axes, drawn):
        color = palette[f.optimizer]
        others = [t for t in f.trials if t.ok and not t.pareto]
        ax.scatter(
            [t.values[x] for t in others],
            [t.values[y] for t in others],
            s=22,
            facecolors="none",
            edgecolors=color,
            alpha=0.7,
        )
        best = sorted((t for t in f.trials if t.ok and t.pareto), key=lambda t: (t.values[x], t.values[y]))
        xs, ys = [t.values[x] for t in best], [t.values[y] for t in best]
        ax.step(xs, ys, where="post", color=color, linewidth=1.2)
        ax.scatter(xs, ys, s=34, color=color, edgecolors="black", linewidths=0.6, zorder=3)
        for t in best:
            ax.annotate(
                str(t.number), (t.values[x], t.values[y]), xytext=(3, 3), textcoords="offset points", fontsize="x-small"
            )
        ax.set_title(f.optimizer.replace("$", r"\$"), fontsize="medium")
        ax.grid(alpha=0.3)
    fig.supxlabel("training seconds")
    fig.supylabel("validation accuracy")
    return fig
