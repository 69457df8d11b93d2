"""The statistics behind a trustworthy optimizer comparison: seed spread, ties, budget curves.

Published comparisons (Schmidt et al. 2021, DeepOBS) show that optimizer rankings flip with the
tuning budget and the seed. So the report never ranks by one lucky number: each best
configuration is re-trained over several seeds (``seed_stats``), an optimizer the seeds cannot
tell from the top-ranked one is marked not distinguishable (``rank_and_tie``), and the search is
summarised by how the best result grows with the budget (``budget_curve``). Pure functions of
numbers (numpy and scipy only), so ``sweep.report.collect`` can feed them from the stores and tests
can feed them by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from sweep.report.comparison import BudgetCurve, SeedStats

ALPHA = 0.05
# Below 3 seeds a side, Welch's test has 1-2 degrees of freedom: it rejects almost nothing, so a
# non-rejection says nothing about the means and no tie (or difference) is called at all.
MIN_TIE_SEEDS = 3
TIE_RULE = (
    f"not distinguishable: Welch's t-test against the top-ranked optimizer, two-sided, p >= {ALPHA:g}, over the "
    f"re-evaluation seeds (not a proof of equal means); with fewer than {MIN_TIE_SEEDS} seeds on either side "
    "no test is made (n/a)"
)

CONFIDENCE = 0.95
PERCENTILES = (5.0, 95.0)  # the budget curve's band over random trial orders
WITHIN_SHARE = 0.02  # share_within_2pct: relative distance from the best
WITHIN_FIRST = 0.01  # trials_to_1pct

# Elements per working array (float64: 16 MiB), so a 100,000-trial search stays in bounded memory.
_CHUNK_ELEMENTS = 1 << 21
# Weights below exp(-_LOG_CUTOFF) times the largest one are left out of the expected best: their
# total is under n * exp(-50) < 2e-17 of the result, below float64 resolution.
_LOG_CUTOFF = 50.0


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{what}[{bad[0]}] is {array[bad[0]]}: values must be finite numbers")
    return array


def seed_stats(values: Sequence[float]) -> SeedStats:
    """Mean, sample spread and 95 % confidence interval of one configuration over seeds.

    The sample std (ddof=1) and Student's t are used because re-evaluations are few (3-10 seeds):
    the normal interval would be far too narrow. One seed has no spread: std 0.0 and an interval
    collapsed on the mean (``SeedStats.spread_measured`` is False), which the report shows as
    '1 seed', never as certainty. A sample of identical values gets exactly that value as its mean
    and 0.0 as its std (no rounding residue), so the tie rule's zero-variance case is recognised
    exactly; its collapsed interval is shown as 'identical seeds', not as a measured one.
    """
    array = _finite(values, "values")
    n = int(array.size)
    if n == 0:
        raise ValueError("seed_stats needs at least one value (no re-evaluation finished)")
    if np.all(array == array[0]):
        mean, std = float(array[0]), 0.0
    else:
        mean, std = math.fsum(array) / n, float(np.std(array, ddof=1))
    if n == 1 or std == 0.0:
        return SeedStats(n=n, mean=mean, std=std, ci_low=mean, ci_high=mean)
    half = float(sps.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return SeedStats(n=n, mean=mean, std=std, ci_low=mean - half, ci_high=mean + half)


@dataclass(frozen=True)
class TieResult:
    """One optimizer's place in the ranking and whether it is within noise of the top one."""

    name: str
    stats: SeedStats
    tied: bool | None  # True: not distinguishable (and for the top one); None: too few seeds to test
    p_value: float | None  # Welch's two-sided p against the top one; None for it and untested ones


def _tie_test(top_stats: SeedStats, other_stats: SeedStats, min_seeds: int) -> float | None:
    if top_stats.n < min_seeds or other_stats.n < min_seeds:
        return None
    if top_stats.std == 0.0 and other_stats.std == 0.0:
        # Welch's statistic is 0/0 here; with no noise on either side only equality is a tie.
        return 1.0 if top_stats.mean == other_stats.mean else 0.0
    # Welch's test (as ttest_ind(top, other, equal_var=False)) from the exact statistics, so a
    # constant sample's variance is exactly 0, not scipy's rounding residue with its warning.
    return float(
        sps.ttest_ind_from_stats(
            top_stats.mean,
            top_stats.std,
            top_stats.n,
            other_stats.mean,
            other_stats.std,
            other_stats.n,
            equal_var=False,
        ).pvalue
    )


def rank_and_tie(
    samples: Mapping[str, Sequence[float]], alpha: float = ALPHA, min_seeds: int = MIN_TIE_SEEDS
) -> list[TieResult]:
    """Rank optimizers by mean test accuracy (best first) and mark those not distinguishable from the top.

    Welch's t-test (scipy, unequal variances) because optimizers differ in seed sensitivity as
    much as in mean; two-sided and against the top one only, so the question is 'could this one be as good as
    the winner?', one test per optimizer. Not rejecting at ``alpha`` is ``tied``, read as 'not
    distinguishable with these seeds', not as equal. Decided edge cases: fewer than ``min_seeds``
    values on either side are not tested (tied None, p None; the top one is still tied with
    itself), because with 2 seeds a side the test rejects almost nothing and every row would read
    tied; zero variance on both sides is tied exactly when the means are equal (p 1.0, else 0.0);
    equal means are ordered by name, so the ranking never depends on the mapping's order.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha is {alpha}: it must lie strictly between 0 and 1")
    if min_seeds < 2:
        raise ValueError(f"min_seeds is {min_seeds}: Welch's test needs at least 2 values a side")
    computed = {}
    for name, values in samples.items():
        try:
            computed[name] = seed_stats(values)
        except ValueError as e:
            raise ValueError(f"optimizer {name!r}: {e}") from None
    order = sorted(computed, key=lambda name: (-computed[name].mean, name))
    if not order:
        return []
    top = order[0]
    results = [TieResult(top, computed[top], tied=True, p_value=None)]
    for name in order[1:]:
        p = _tie_test(computed[top], computed[name], min_seeds)
        results.append(TieResult(name, computed[name], tied=None if p is None else p >= alpha, p_value=p))
    return results


def _expected_best(ranked: np.ndarray) -> np.ndarray:
    """E[best of the first k] for k = 1..n, exactly, from the values in the order of who wins.

    The first k trials of a uniformly random order are a uniformly random k-subset, whose maximum
    is the i-th smallest of n with probability w(i, k) = C(i-1, k-1) / C(n, k). Binomials overflow
    long before n = 5,000 and log-gamma differences lose ~1e-10 at n = 100,000 (logs of size 1e6
    cancel), so the weights are taken from the top as a product of ratios near 1:
    w(n, k) = k/n and w(i-1, k) = w(i, k) * (i-k)/(i-1), summed as log1p terms (relative error
    ~1e-15 at n = 100,000). For large k the negligible low weights (under exp(-50) of the largest)
    are skipped, so n = 100,000 takes O(n log n) work instead of n^2; rows go in chunks of bounded
    memory.
    """
    n = ranked.size
    out = np.empty(n)
    k = 1
    while k <= n:
        # w(i, k) / w(n, k) <= ((i-1)/(n-1))^(k-1): below the cutoff for i - 1 < (n-1) exp(-cutoff/(k-1)).
        # The block's first row (k) has the loosest bound; below i = k every weight is exactly 0.
        i_lo = k if k == 1 else max(k, int((n - 1) * math.exp(-_LOG_CUTOFF / (k - 1))) + 1)
        width = n - i_lo + 1
        rows = max(1, min(n - k + 1, _CHUNK_ELEMENTS // width))
        ks = np.arange(k, k + rows)[:, None]
        j = np.arange(i_lo + 1, n + 1)[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            # log((j-k)/(j-1)), the step from w(j, k) down to w(j-1, k); j <= k: no such subset
            steps = np.where(j > ks, np.log1p(-(ks - 1) / np.maximum(j - 1, 1)), -np.inf)
        log_w = np.zeros((rows, width))
        log_w[:, :-1] = np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]
        out[k - 1 : k - 1 + rows] = np.exp(log_w + np.log(ks / n)) @ ranked[i_lo - 1 :]
        k += rows
    return out


def _order_band(ranked: np.ndarray, orders: int, rng_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The 5th/95th percentile of best-of-the-first-k over ``orders`` random trial orders.

    Permutes ranks (positions in ``ranked``), so the running maximum of ranks is the running best.
    Memory stays bounded for any n: permutations are drawn in row chunks (the same random stream
    as one matrix, so chunking does not change the result), each row keeps only its records (the
    positions where its running best rises, about ln n per row), and the percentiles are taken
    over column blocks rebuilt from those records.
    """
    n = ranked.size
    rng = np.random.default_rng(rng_seed)
    rec_rows, rec_cols, rec_ranks = [], [], []
    per_chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, orders, per_chunk):
        rows = min(per_chunk, orders - start)
        running = np.maximum.accumulate(rng.permuted(np.tile(np.arange(n), (rows, 1)), axis=1), axis=1)
        rises = np.ones_like(running, dtype=bool)
        rises[:, 1:] = running[:, 1:] != running[:, :-1]
        r, c = np.nonzero(rises)
        rec_rows.append(r + start)
        rec_cols.append(c)
        rec_ranks.append(running[r, c])
    rows_all, cols_all, ranks_all = (np.concatenate(a) for a in (rec_rows, rec_cols, rec_ranks))
    low, high = np.empty(n), np.empty(n)
    carry = np.full(orders, -1)
    block = max(1, _CHUNK_ELEMENTS // orders)
    for c0 in range(0, n, block):
        c1 = min(n, c0 + block)
        dense = np.full((orders, c1 - c0), -1)
        dense[:, 0] = carry
        inside = (cols_all >= c0) & (cols_all < c1)
        dense[rows_all[inside], cols_all[inside] - c0] = ranks_all[inside]
        dense = np.maximum.accumulate(dense, axis=1)
        carry = dense[:, -1]
        low[c0:c1], high[c0:c1] = np.percentile(ranked[dense], PERCENTILES, axis=0)
    return low, high


def budget_curve(values: Sequence[float | None], rng_seed: int = 0, orders: int = 2000) -> BudgetCurve:
    """How one optimizer's best search result grows with the number of trials it is given.

    ``values`` are the trials that count against the budget, in the order the sweep ran them;
    None is a trial without a usable result (pruned, diverged, failed): it never wins, and a set
    of trials with no scored one is worth 0.0. The expected best after k trials is over a uniformly
    random order of the trials, i.e. the limit of bootstrapping over orders, computed exactly so it
    carries no sampling noise; the 5-95 % band comes from ``orders`` seeded random orders, because
    one sweep's actual order is just one draw. The band need not contain the expectation: once
    k/n >= 0.95 at least 95 % of orders hold the best trial, so both edges are the max while the
    expectation is still below it, and one trial far above the rest puts the mean above the 95th
    percentile. ``share_within_2pct`` (of all trials, unscored ones not within) says how forgiving
    the search space is; ``trials_to_1pct`` is how long this sweep's own order took to get within
    1 % of its best. With no scored trial or a best <= 0 the relative measures mean nothing:
    None, and curves of 0.0.
    """
    if len(values) == 0:
        raise ValueError("budget_curve needs at least one trial (an optimizer whose search ran none)")
    if orders < 1:
        raise ValueError(f"orders is {orders}: at least one random trial order is needed")
    n = len(values)
    scored = _finite([v for v in values if v is not None], "scored values")
    best = float(scored.max()) if scored.size else None
    if best is None or best <= 0.0:
        zeros = (0.0,) * n
        return BudgetCurve(zeros, zeros, zeros, share_within_2pct=None, trials_to_1pct=None)
    # In the order of who wins: unscored trials lowest (they never win; as a subset's maximum, i.e.
    # a subset with no scored trial, they stand for 0.0), then the scored ones ascending.
    ranked = np.concatenate([np.zeros(n - scored.size), np.sort(scored)])
    expected = _expected_best(ranked)
    low, high = _order_band(ranked, orders, rng_seed)
    within = sum(1 for v in values if v is not None and v >= (1.0 - WITHIN_SHARE) * best)
    first = next(pos for pos, v in enumerate(values, start=1) if v is not None and v >= (1.0 - WITHIN_FIRST) * best)
    return BudgetCurve(
        expected_best=tuple(float(x) for x in expected),
        low=tuple(float(x) for x in low),
        high=tuple(float(x) for x in high),
        share_within_2pct=within / n,
        trials_to_1pct=first,
    )
