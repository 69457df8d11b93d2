"""The benchmark's figures: performance profiles and per-workload Pareto fronts.

Drawn from ``profiles``'s plain values (no store is read here) on ``matplotlib.figure.Figure``
directly, as ``plots`` draws the report's figures: no pyplot, no global state, and saving a PNG
picks the Agg renderer. Optimizers keep the colours they have in every other figure (``colors``).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sweep.report.plots import DPI, LOG_RATIO, PANEL_HEIGHT, WIDTH, colors

# A line style per optimizer besides its colour, so lines that coincide (or print in grey) stay
# told apart: solid, dashed, dash-dot, dotted, then denser dash patterns.
LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2)))
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")
RATIO_TICKS = (1, 1.25, 1.5, 2, 3, 4, 6, 8, 16, 32, 64)
SAME_OFFSET = 0.012  # share of workloads: how far a profile equal to an earlier one is shifted up


def _plain(text: object) -> str:
    """A name as plain text: a ``$`` would start matplotlib's math mode."""
    return str(text).replace("$", r"\$")


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()  # the Figure is not registered anywhere (no pyplot); clearing frees its artists now
    return path


def _same_as(profiles: dict[str, list[float]]) -> dict[str, tuple[str, int]]:
    """For each optimizer whose profile equals an earlier one's: (that first optimizer, how many
    equal ones came before it), to offset and label the lines that would hide each other."""
    first: dict[tuple[float, ...], list[str]] = {}
    out = {}
    for name, values in profiles.items():
        group = first.setdefault(tuple(values), [])
        if group:
            out[name] = (group[0], len(group))
        group.append(name)
    return out


def profile_figure(profiles: dict[str, list[float]], taus: list[float], path: Path, r_max: float, title: str) -> Path:
    """ρ_s(τ) of each optimizer as a step line over τ in [1, r_max] (log2 axis: a 2x-slower ratio
    is the same width wherever it lies). Higher and further left is better; the height at τ = 1 is
    how often the optimizer was the fastest. A profile equal to an earlier one is drawn shifted up
    a little and says so in the legend, so no optimizer's line disappears under another."""
    palette = colors(profiles)
    same = _same_as(profiles)
    fig = Figure(figsize=(WIDTH, 4.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for k, (name, values) in enumerate(profiles.items()):
        label, shift = _plain(name), 0.0
        if name in same:
            twin, nth = same[name]
            label, shift = f"{label} (same as {_plain(twin)}, drawn raised)", nth * SAME_OFFSET
        ax.step(
            taus,
            [v + shift for v in values],
            where="post",  # ρ_s(τ) counts ratios ≤ τ: it steps up at a ratio and holds to the next
            color=palette[name],
            linestyle=LINE_STYLES[k % len(LINE_STYLES)],
            linewidth=2.0,
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlim(1.0, r_max)
    ticks = sorted({t for t in RATIO_TICKS if t <= r_max} | {r_max})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])  # plain ratios (1.5, 3), not powers of two
    ax.minorticks_off()
    ax.set_ylim(-0.03, 1.03 + SAME_OFFSET * max((n for _, n in same.values()), default=0))
    ax.set_xlabel("performance ratio τ (time / fastest)")
    ax.set_ylabel("share of workloads reached within τ")
    ax.set_title(_plain(title))
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small", frameon=False)
    return _save(fig, path)


def _front_axes(ax, workload: str, fronts: dict[str, list[tuple[float, float]]], palette, styles) -> None:
    """One workload's panel: each optimizer's front as a rising step line with its points marked."""
    seconds = []
    for name, points in fronts.items():
        if not points:
            continue
        ordered = sorted(points)
        xs = [s for s, _ in ordered]
        seconds += xs
        ax.step(
            xs,
            [a for _, a in ordered],
            where="post",  # the best accuracy within a budget holds until a slower point beats it
            color=palette[name],
            linestyle=styles[name][0],
            marker=styles[name][1],
            markersize=5,
        )
    positive = [s for s in seconds if s > 0]
    if positive and max(positive) / min(positive) > LOG_RATIO:
        ax.set_xscale("log")
    ax.set_title(_plain(workload), fontsize="medium")
    ax.grid(True, alpha=0.3)


def front_figure(fronts: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> Path:
    """One panel per workload (small multiples), each optimizer's Pareto front of (training seconds,
    best validation accuracy): what accuracy each optimizer buys at each time budget, so a faster
    but less accurate optimizer is seen beside a slower, more accurate one."""
    if not fronts:
        raise ValueError("no workloads to draw")
    names = list(dict.fromkeys(s for row in fronts.values() for s in row))
    palette = colors(names)
    styles = {s: (LINE_STYLES[k % len(LINE_STYLES)], MARKERS[k % len(MARKERS)]) for k, s in enumerate(names)}
    cols = min(3, len(fronts))
    rows = -(-len(fronts) // cols)
    fig = Figure(figsize=(WIDTH, 0.6 + PANEL_HEIGHT * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(fronts) :]:
        ax.remove()
    for ax, (workload, row) in zip(axes, fronts.items()):
        _front_axes(ax, workload, row, palette, styles)
    fig.supxlabel("training seconds")
    fig.supylabel("best validation accuracy")
    handles = [
        Line2D([], [], color=palette[s], linestyle=styles[s][0], marker=styles[s][1], label=_plain(s)) for s in names
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    return _save(fig, path)
