"""The report's figures, drawn from a ``Comparison`` only (no store is read here).

Each figure is one function ``(comparison) -> Figure | None`` (None: nothing to draw yet), listed in
``FIGURES`` with the one-line caption that says how to read it. Figures are built on
``matplotlib.figure.Figure`` directly, never through pyplot: no display, no global figure state,
safe to draw from any thread; saving a PNG picks the Agg renderer by itself.

An optimizer has one colour in every figure and every report: its position in the ``OPTIMIZERS``
registry picks it, so sgd is the same blue whichever optimizers a sweep compares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from optim import OPTIMIZERS, SCHEDULES
from sweep.core.outcome import Status
from sweep.report import pareto
from sweep.report.comparison import MIN_IMPORTANCE_TRIALS, Comparison, OptimizerResult, SearchedTrial

DPI = 110
WIDTH = 9.5  # inches: about 1045 px at DPI, a laptop screen's width with margins
PANEL_HEIGHT = 2.6  # inches per row of small multiples
SMALL_HEIGHT = 2.3  # inches per row of the one-panel-per-optimizer figures
COLS = 3  # their panels per row (as the history's)
LR_FLOOR = 1e-4  # the schedules' log axis stops this far below each peak learning rate

# Tableau's ten, their lighter tab20 hues, then tab20b's twenty: the registry's entries take one
# each by position (the 17 built-in optimizers always the same; declared ones in the order this
# process registered them), names outside the registry (a test's) the next unused ones, so up to
# 40 optimizers in one report never share a colour.
PALETTE = (
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"),
    *("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"),
    *("#393b79", "#5254a3", "#6b6ecf", "#9c9ede", "#637939", "#8ca252", "#b5cf6b", "#cedb9c", "#8c6d31", "#bd9e39"),
    *("#e7ba52", "#e7cb94", "#843c39", "#ad494a", "#d6616b", "#e7969c", "#7b4173", "#a55194", "#ce6dad", "#de9ed6"),
)
# Batch sizes in the LR-sensitivity panels (Dark2: apart from the optimizers' colours in the titles).
BATCH_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
# One marker per schedule, by registry position, for the LR-sensitivity scatter.
MARKERS = ("o", "s", "D", "v", "^", "P", "X", "*", "h", "<", ">", "p")
LOG_RATIO = 20.0  # an LR range wider than this is drawn on a log axis


def _assign(names: Iterable[str], registry: list[str], styles: list[str]) -> dict[str, str]:
    """A style per name: its registry position's, else the next unused one after the registry's."""
    out, extra = {}, len(registry)
    for name in names:
        if name in out:
            continue
        if name in registry:
            out[name] = styles[registry.index(name) % len(styles)]
        else:
            out[name] = styles[extra % len(styles)]
            extra += 1
    return out


def colors(names: Iterable[str]) -> dict[str, str]:
    """Each optimizer's colour, the same in every report."""
    return _assign(names, list(OPTIMIZERS), PALETTE)


def markers(names: Iterable[str]) -> dict[str, str]:
    """Each schedule's marker, the same in every report."""
    return _assign(names, list(SCHEDULES), MARKERS)


def _t(text: object) -> str:
    """A name from the data as plain text: a ``$`` would start matplotlib's math mode (and a
    malformed formula fails the whole figure)."""
    return str(text).replace("$", r"\$")


def _palette(comparison: Comparison) -> dict[str, str]:
    return colors(r.optimizer for r in comparison.results)


def _figure(height: float) -> Figure:
    return Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")


def _grid(fig: Figure, n: int, *, sharex: bool = False, sharey: bool = False, max_cols: int = 3):
    """``n`` small-multiple axes, row by row; unused cells are removed."""
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, sharex=sharex, sharey=sharey, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.remove()
    for ax in axes[max(0, n - cols) : n]:  # nothing below them: a shared x axis still needs its labels
        ax.tick_params(labelbottom=True)
    return list(axes[:n])


def _rows(n: int, max_cols: int = 3) -> int:
    return math.ceil(n / min(max_cols, n))


def _trial(result: OptimizerResult, number: int | None) -> SearchedTrial | None:
    return next((t for t in result.trials if t.number == number), None) if number is not None else None


def _legend_outside(fig: Figure, handles: list, title: str | None = None) -> None:
    fig.legend(handles=handles, loc="outside right upper", title=title, fontsize="small", frameon=False)


def convergence(comparison: Comparison) -> Figure | None:
    """Validation accuracy per epoch of each optimizer's best configuration: the mean over its
    re-evaluation seeds with the min-max band; without re-evaluations, its best search trial."""
    palette = _palette(comparison)
    fig = _figure(5.2)
    ax = fig.subplots()
    drawn = 0
    for result in comparison.results:
        color = palette[result.optimizer]
        curves = [run.val_curve for run in result.reevals if run.val_curve]
        if curves:
            epochs = max(len(c) for c in curves)
            xs, mean, low, high = [], [], [], []
            for e in range(epochs):
                values = [c[e] for c in curves if len(c) > e]
                xs.append(e + 1)
                mean.append(sum(values) / len(values))
                low.append(min(values))
                high.append(max(values))
            ax.plot(
                xs,
                mean,
                color=color,
                lw=2,
                marker="o",
                ms=3,
                label=f"{_t(result.optimizer)} ({len(curves)} seed{'s' if len(curves) != 1 else ''})",
            )
            ax.fill_between(xs, low, high, color=color, alpha=0.18, lw=0)
            drawn += 1
            continue
        best = _trial(result, result.best_trial)
        if best is not None and best.val_curve:
            xs = range(1, len(best.val_curve) + 1)
            ax.plot(
                xs,
                best.val_curve,
                color=color,
                lw=1.6,
                ls="--",
                marker="o",
                ms=3,
                mfc="none",
                label=f"{_t(result.optimizer)} (search trial, 1 seed)",
            )
            drawn += 1
    if not drawn:
        return None
    _finish_axes(ax, "Convergence of each optimizer's best configuration", "epoch", "validation accuracy")
    return fig


def _finish_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    """Title, labels, whole-number x ticks (epochs, trials), a light grid and the legend."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")


def _small_multiples(fig: Figure, n: int, *, sharex: bool = True, sharey: bool = True):
    """One panel per optimizer, shared axes: studies share their sampler seed, so two optimizers
    often draw the same learning rate and schedule, and on one axes one line or point hid another."""
    return _grid(fig, n, sharex=sharex, sharey=sharey, max_cols=COLS)


def _panel_title(ax, result: OptimizerResult, color: str, detail: str = "") -> None:
    ax.set_title(_t(result.optimizer) + (f": {detail}" if detail else ""), fontsize="small", color=color)


def lr_sensitivity(comparison: Comparison) -> Figure | None:
    """Final validation accuracy of every search trial against its learning rate, one panel per
    optimizer (shared axes); with searched batch sizes, the colour is the batch size."""
    drawn = [
        (r, [t for t in r.trials if t.last_val_accuracy is not None and t.lr is not None and t.lr > 0])
        for r in comparison.results
    ]
    drawn = [(r, points) for r, points in drawn if points]
    if not drawn:
        return None
    palette = _palette(comparison)
    shapes = markers(t.schedule for _, points in drawn for t in points)
    searched = set(comparison.batch_sizes) | {t.batch_size for _, points in drawn for t in points}
    batches = sorted(searched) if len(comparison.batch_sizes) > 1 else []
    by_batch = {b: BATCH_COLORS[i % len(BATCH_COLORS)] for i, b in enumerate(batches)}
    fig = _figure(max(3.4, _rows(len(drawn), COLS) * SMALL_HEIGHT + 0.8))
    axes = _small_multiples(fig, len(drawn))
    for ax, (result, points) in zip(axes, drawn):
        for t in points:
            color = by_batch.get(t.batch_size, "0.2") if batches else palette[result.optimizer]
            ok = t.status is Status.OK
            ax.scatter(
                t.lr,
                t.last_val_accuracy,
                marker=shapes[t.schedule],
                s=30,
                linewidths=1.1,
                edgecolors=color,
                facecolors=color if ok else "none",
                alpha=0.85,
                gid=f"{result.optimizer}:{t.number}",
            )
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        _panel_title(ax, result, palette[result.optimizer])
    fig.supxlabel("learning rate (log scale)", fontsize="medium")
    fig.supylabel("final validation accuracy", fontsize="medium")
    fig.suptitle("Learning-rate sensitivity: every search trial, per optimizer")
    handles = [Line2D([], [], ls="", marker="o", color=c, label=f"batch size {b}") for b, c in by_batch.items()]
    handles += [Line2D([], [], ls="", marker=m, color="0.35", label=f"schedule: {_t(s)}") for s, m in shapes.items()]
    handles.append(Line2D([], [], ls="", marker="o", mfc="none", color="0.35", label="hollow: not ok"))
    _legend_outside(fig, handles)
    return fig


def schedules(comparison: Comparison) -> Figure | None:
    """The learning rate at every step of each optimizer's best configuration, one panel each,
    relative to its peak (in the title) so shared axes compare shapes. A log axis stops at
    ``LR_FLOOR`` of the peak: one-cycle ends 1e-8 below it, which spread the axis over 9 decades."""
    palette = _palette(comparison)
    drawn = [r for r in comparison.results if r.lr_per_step and max(r.lr_per_step) > 0]
    if not drawn:
        return None
    relative = [[v / max(r.lr_per_step) for v in r.lr_per_step] for r in drawn]
    lowest = min(v for rel in relative for v in rel if v > 0)
    fig = _figure(max(3.4, _rows(len(drawn), COLS) * SMALL_HEIGHT + 0.8))
    axes = _small_multiples(fig, len(drawn))
    for ax, result, rel in zip(axes, drawn, relative):
        per = result.steps_per_epoch if result.steps_per_epoch > 0 else 1
        best = _trial(result, result.best_trial)
        schedule = f"{_t(best.schedule)}, " if best is not None and best.schedule else ""
        ax.plot([i / per for i in range(len(rel))], rel, color=palette[result.optimizer], lw=1.8)
        ax.grid(alpha=0.3)
        _panel_title(ax, result, palette[result.optimizer], f"{schedule}peak {max(result.lr_per_step):.3g}")
    if lowest < 1 / LOG_RATIO:
        axes[0].set_yscale("log")
        axes[0].set_ylim(max(LR_FLOOR, lowest / 1.25), 1.25)
        ylabel = f"LR ÷ its peak (log scale, cut at {LR_FLOOR:g})"
    else:
        axes[0].set_ylim(0, 1.05)
        ylabel = "LR ÷ its peak"
    fig.supylabel(ylabel, fontsize="medium")
    fig.supxlabel("epoch" if all(r.steps_per_epoch > 0 for r in drawn) else "step", fontsize="medium")
    fig.suptitle("Learning-rate schedule of each optimizer's best configuration")
    return fig


BUDGET_ZERO = "pruned, diverged and failed trials count as accuracy 0"


def budget(comparison: Comparison) -> Figure | None:
    """Expected best validation accuracy after k trials, with the 5-95 % band over trial orders,
    one panel per optimizer: overlaid, the bands merged into one grey block. A trial without a
    score counts as 0 (``stats.budget_curve``), which the axis and each panel's title say."""
    palette = _palette(comparison)
    drawn = [r for r in comparison.results if r.budget is not None and r.budget.expected_best]
    if not drawn:
        return None
    fig = _figure(max(3.6, _rows(len(drawn), COLS) * SMALL_HEIGHT + 0.9))
    axes = _small_multiples(fig, len(drawn))
    for ax, result in zip(axes, drawn):
        curve, color = result.budget, palette[result.optimizer]
        ks = range(1, len(curve.expected_best) + 1)
        if len(curve.low) == len(curve.high) == len(curve.expected_best):
            ax.fill_between(ks, curve.low, curve.high, color=color, alpha=0.2, lw=0)
        ax.plot(ks, curve.expected_best, color=color, lw=2)
        unscored = sum(1 for t in result.trials if t.value is None)
        _panel_title(ax, result, color, f"{unscored} of {len(ks)} unscored (= 0)" if unscored else "")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.supxlabel(f"trials searched (k); {BUDGET_ZERO}", fontsize="medium")
    fig.supylabel("expected best val. accuracy (unscored = 0)", fontsize="medium")
    fig.suptitle("Tuning budget: expected best validation accuracy after k trials")
    _legend_outside(
        fig,
        [
            Line2D([], [], color="0.35", lw=2, label="expected best"),
            Patch(color="0.35", alpha=0.2, label="5-95 % of\ntrial orders"),
        ],
    )
    return fig


def importance_note(comparison: Comparison) -> str:
    """Which optimizers have no importances because too few of their trials finished, or ''."""
    few = [r for r in comparison.results if not r.importances and 0 < r.importance_trials < MIN_IMPORTANCE_TRIALS]
    if not few:
        return ""
    names = ", ".join(f"{r.optimizer} ({r.importance_trials})" for r in few)
    return f"Left out, from fewer than {MIN_IMPORTANCE_TRIALS} finished trials (not meaningful): {names}."


def importances(comparison: Comparison) -> Figure | None:
    """Optuna's parameter importances, one panel per optimizer that has them, titled with the
    number of finished trials they come from; those with too few are named below the panels."""
    palette = _palette(comparison)
    drawn = [r for r in comparison.results if r.importances]
    if not drawn:
        return None
    most = max(len(r.importances) for r in drawn)
    note = importance_note(comparison)
    fig = _figure(max(3.2, _rows(len(drawn)) * max(PANEL_HEIGHT, 0.35 * most + 1.2)) + 0.5 + (0.3 if note else 0))
    axes = _grid(fig, len(drawn), sharex=True)
    for ax, result in zip(axes, drawn):
        ranked = sorted(result.importances.items(), key=lambda kv: kv[1])
        ax.barh(
            [_t(k) for k, _ in ranked],
            [v for _, v in ranked],
            color=palette[result.optimizer],
            label=_t(result.optimizer),
        )
        trials = f" ({result.importance_trials} finished trials)" if result.importance_trials else ""
        ax.set_title(_t(result.optimizer) + trials, fontsize="medium", color=palette[result.optimizer])
        ax.set_xlabel("importance")
        ax.tick_params(axis="y", labelsize="small")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlim(0, max(1.0, max(max(r.importances.values()) for r in drawn)))
    fig.suptitle("Which hyperparameters mattered (Optuna importances)")
    fig.supylabel("hyperparameter", fontsize="medium")
    if note:
        fig.supxlabel(_t(note), fontsize="small", color="0.3")
    _legend_outside(fig, [Line2D([], [], color=palette[r.optimizer], lw=6, label=_t(r.optimizer)) for r in drawn])
    return fig


def history(comparison: Comparison) -> Figure | None:
    """Each search trial's validation accuracy by trial number, with the best so far."""
    palette = _palette(comparison)
    drawn = [r for r in comparison.results if any(_shown(t) is not None for t in r.trials)]
    if not drawn:
        return None
    fig = _figure(_rows(len(drawn)) * PANEL_HEIGHT + 0.6)
    axes = _grid(fig, len(drawn), sharey=True)
    for ax, result in zip(axes, drawn):
        color = palette[result.optimizer]
        ok = [(t.number, t.value) for t in result.trials if t.status is Status.OK and t.value is not None]
        other = [
            (t.number, _shown(t))
            for t in result.trials
            if not (t.status is Status.OK and t.value is not None) and _shown(t) is not None
        ]
        if ok:
            ax.scatter(*zip(*ok), s=22, color=color, zorder=3)
            best, steps = -math.inf, []
            for number, value in ok:
                best = max(best, value)
                steps.append((number, best))
            last = max(t.number for t in result.trials)
            steps.append((last, best))
            ax.step(*zip(*steps), where="post", color=color, lw=1.5, alpha=0.8)
        if other:
            ax.scatter(*zip(*other), s=22, facecolors="none", edgecolors=color, linewidths=1.1, zorder=3)
        ax.set_title(_t(result.optimizer), fontsize="medium", color=color)
        ax.set_xlabel("trial number")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in axes[:: min(3, len(drawn))]:
        ax.set_ylabel("validation accuracy")
    fig.suptitle("Optimization history: each trial, and the best so far")
    _legend_outside(
        fig,
        [
            Line2D([], [], ls="", marker="o", color="0.35", label="ok"),
            Line2D([], [], ls="", marker="o", mfc="none", color="0.35", label="not ok (last reported)"),
            Line2D([], [], color="0.35", drawstyle="steps-post", label="best so far"),
        ],
    )
    return fig


def _shown(trial: SearchedTrial) -> float | None:
    """The accuracy a trial is drawn at: its value if scored, else the last one it reported."""
    return trial.value if trial.status is Status.OK and trial.value is not None else trial.last_val_accuracy


@dataclass(frozen=True)
class FigureSpec:
    draw: Callable[[Comparison], Figure | None]
    caption: str  # how to read it, one line
    alt: str  # what it shows, for a reader without the image


FIGURES: dict[str, FigureSpec] = {
    "convergence": FigureSpec(
        convergence,
        "Validation accuracy per epoch of each optimizer's best configuration: the line is the mean over "
        "its re-evaluation seeds, the band their min-max range; a dashed line is the search trial alone "
        "(1 seed, not yet re-evaluated).",
        "Validation accuracy per epoch for each optimizer's best configuration",
    ),
    "lr_sensitivity": FigureSpec(
        lr_sensitivity,
        "Every search trial's last validation accuracy against its learning rate (log scale), one panel per "
        "optimizer on shared axes (their searches share a sampler seed, so they often try the same rates); "
        "marker: the LR schedule; colour: the batch size when it is searched; hollow markers are trials that "
        "did not finish ok (pruned, diverged, failed), drawn at the last accuracy they reported.",
        "Scatter of final validation accuracy against learning rate for every search trial",
    ),
    "schedules": FigureSpec(
        schedules,
        "The learning rate each best configuration used at every optimizer step, in epochs, one panel per "
        "optimizer, as a fraction of its peak (named in the panel's title); the y axis is logarithmic when "
        "a schedule falls below 1/20 of its peak, and stops at 1e-4 of the peak (one-cycle ends far below).",
        "Learning rate per step of each optimizer's best configuration",
    ),
    "budget": FigureSpec(
        budget,
        "Expected best validation accuracy if only k trials had been searched (exact expectation over "
        "random orders of the trials run), one panel per optimizer; the band spans the 5th to 95th percentile. "
        "Pruned, diverged and failed trials count as accuracy 0 (each panel says how many): they never win, "
        "but k trials that all lack a score are worth 0. A curve that flattens early needs little tuning.",
        "Expected best validation accuracy against number of trials, per optimizer",
    ),
    "importances": FigureSpec(
        importances,
        "Optuna's parameter importances for each optimizer's search (fANOVA, from the finished trials its "
        "panel names): the longer the bar, the more that hyperparameter explained the spread of validation "
        f"accuracy; optimizers with fewer than {MIN_IMPORTANCE_TRIALS} finished trials are left out (named "
        "below the panels).",
        "Horizontal bars of hyperparameter importance, one panel per optimizer",
    ),
    "history": FigureSpec(
        history,
        "Each search trial's validation accuracy by trial number (filled: finished ok; hollow: pruned, "
        "diverged or failed, at the last accuracy reported) and the best-so-far line.",
        "Validation accuracy of every trial in search order, with the best so far, per optimizer",
    ),
    "pareto": FigureSpec(pareto.figure, pareto.CAPTION, pareto.ALT),  # a multi-objective search only
}


def write_plots(comparison: Comparison, folder: str | Path) -> dict[str, Path]:
    """Draw every figure that has something to show as ``<folder>/<name>.png``; name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, spec in FIGURES.items():
        fig = spec.draw(comparison)
        if fig is None:
            continue
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=DPI, metadata={"Software": None})
        written[name] = path
    return written
