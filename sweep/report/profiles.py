"""The benchmark's scoring: performance profiles and their scores (AlgoPerf, Dahl et al. 2023).

A mean of times across workloads lets one slow workload decide the comparison; a profile does not.
Each optimizer's time to the target on a workload is divided by the fastest optimizer's there (its
performance ratio, 1 = fastest, inf = never reached), and its profile ρ_s(τ) is the share of
workloads it reached within τ times the fastest. A researcher reads from the profile at τ = 1 how
often an optimizer is the fastest, at larger τ how often it is at least close, and from where the
curve ends how often it never gets there. The score is the area under ρ_s on [1, r_max] over
(r_max − 1): 1.0 for an optimizer fastest everywhere, 0.0 for one never within r_max of the fastest,
as mlcommons/algorithmic-efficiency scores submissions.

Pure functions on plain mappings (``times[workload][optimizer]`` in seconds, ``math.inf`` when
never reached): no store is read here, so the scoring is checked by hand on small tables.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

R_MAX = 4.0  # AlgoPerf's: an optimizer more than 4x slower than the fastest earns nothing there


class Interval(NamedTuple):
    """A bootstrap percentile interval of a score (a plain ``(low, high)`` tuple)."""

    low: float
    high: float


def _optimizers(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The optimizers of a [workload][optimizer] table, in first-seen order; each must appear in
    every workload, since a missing one would change the fastest time or a profile's share."""
    if not table:
        raise ValueError("no workloads: a profile is a share of workloads")
    names = list(dict.fromkeys(s for row in table.values() for s in row))
    missing = [f"{s!r} on {w!r}" for w, row in table.items() for s in names if s not in row]
    if missing:
        raise ValueError(f"every optimizer must appear in every workload; missing: {', '.join(missing)}")
    return names


def _checked_time(workload: str, optimizer: str, t: float) -> float:
    t = float(t)
    if math.isnan(t) or t <= 0:
        raise ValueError(f"time of {optimizer!r} on {workload!r} must be > 0 seconds or inf, got {t}")
    return t


def performance_ratios(times: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """r(s, w) = t(s, w) / min over optimizers of t(·, w), keyed [workload][optimizer]: how many times
    the fastest optimizer's time each one needed. inf where it never reached the target, and
    everywhere on a workload no optimizer reached (there is no fastest time to compare with)."""
    _optimizers(times)
    ratios = {}
    for w, row in times.items():
        checked = {s: _checked_time(w, s, t) for s, t in row.items()}
        best = min(checked.values())
        ratios[w] = {s: t / best if math.isfinite(best) else math.inf for s, t in checked.items()}
    return ratios


def profile(ratios: Mapping[str, Mapping[str, float]], taus: Iterable[float]) -> dict[str, list[float]]:
    """ρ_s(τ) for each τ: the share of workloads where optimizer s was within τ times the fastest."""
    names = _optimizers(ratios)
    taus = list(taus)
    n = len(ratios)
    return {s: [sum(row[s] <= tau for row in ratios.values()) / n for tau in taus] for s in names}


def score(ratios: Mapping[str, Mapping[str, float]], r_max: float = R_MAX) -> dict[str, float]:
    """The area under ρ_s on [1, r_max] over (r_max − 1), exact: ρ_s is a step function, a step of
    1/n up at each workload's ratio r (clipped to [1, r_max]), so the area is the sum of the steps'
    widths (r_max − r)/n, and a ratio above r_max (or inf) adds nothing. ``math.fsum`` makes the
    sum exact-rounded, so optimizers with the same ratios in any order get bit-equal scores."""
    if not r_max > 1:
        raise ValueError(f"r_max must be above 1, got {r_max}")
    names = _optimizers(ratios)
    n = len(ratios)
    width = r_max - 1
    return {s: math.fsum(max(0.0, r_max - max(1.0, row[s])) for row in ratios.values()) / (n * width) for s in names}


def median_times(study_times: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, float]]:
    """Each optimizer's time on a workload as the median over its independent studies, so one lucky
    or unlucky study does not decide it. ``statistics.median`` keeps inf: an odd count's middle
    value, an even count's mean of the middle two (inf if either is), so an optimizer that failed
    in at least half its studies counts as never reaching the target."""
    out: dict[str, dict[str, float]] = {}
    for w, row in study_times.items():
        out[w] = {}
        for s, studies in row.items():
            if not studies:
                raise ValueError(f"no studies of {s!r} on {w!r}")
            out[w][s] = statistics.median(float(t) for t in studies)
    return out


def bootstrap_scores(
    study_times: Mapping[str, Mapping[str, Sequence[float]]],
    r_max: float = R_MAX,
    draws: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Interval]:
    """A percentile interval of each optimizer's score over resampled studies: how much of a gap
    between two scores the study-to-study noise alone could make. Each draw resamples every
    (workload, optimizer)'s studies with replacement, then medians → ratios → scores as for the
    point score (``score(performance_ratios(median_times(study_times)))``)."""
    if draws < 1 or not 0 < level < 1:
        raise ValueError(f"need draws >= 1 and 0 < level < 1, got draws={draws}, level={level}")
    _optimizers(study_times)  # the same check, and message, as the point score's
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(draws):
        resampled = {w: {s: rng.choices(ts, k=len(ts)) for s, ts in row.items()} for w, row in study_times.items()}
        for s, value in score(performance_ratios(median_times(resampled)), r_max).items():
            samples.setdefault(s, []).append(value)
    tail = (1 - level) / 2 * 100
    return {s: Interval(*(float(q) for q in np.percentile(v, [tail, 100 - tail]))) for s, v in samples.items()}


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """1 = best score; equal scores share a rank and the next rank skips ("1, 1, 3"), so a rank
    still says how many optimizers scored strictly better."""
    return {s: 1 + sum(other > mine for other in scores.values()) for s, mine in scores.items()}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (accuracy to maximize, seconds to minimize) points, by seconds:
    the configurations worth choosing at some time budget. Of equal points only the first is kept."""
    for i, (acc, sec) in enumerate(points):
        if math.isnan(acc) or math.isnan(sec):
            raise ValueError(f"point {i} is NaN: {(acc, sec)}")
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front: list[int] = []
    for i in order:  # faster first; a point is kept only if it beats every faster one's accuracy
        if not front or points[i][0] > points[front[-1]][0]:
            front.append(i)
    return front
