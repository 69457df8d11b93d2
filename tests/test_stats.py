"""The report's statistics against numbers worked by hand and against brute force over all orders."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from sweep.report import stats
from sweep.report.stats import TieResult, budget_curve, rank_and_tie, seed_stats


def brute_force_expected_best(values):
    """Mean over every order of the trials of the best of the first k, as exact fractions.
    None never wins; a prefix with no scored trial is worth 0."""
    n = len(values)
    sums = [Fraction(0)] * n
    orders = 0
    for order in itertools.permutations(values):
        orders += 1
        best = None
        for k, v in enumerate(order):
            if v is not None and (best is None or v > best):
                best = v
            sums[k] += Fraction(best) if best is not None else Fraction(0)
    return [s / orders for s in sums]


# --- budget curve: the expectation ---------------------------------------------------------------


def test_expected_best_hand_case_by_enumerating_all_24_orders():
    values = [0.5, 0.9, None, 0.7]
    expected = brute_force_expected_best(values)
    assert len(list(itertools.permutations(values))) == 24
    assert budget_curve(values).expected_best == pytest.approx([float(e) for e in expected], abs=1e-15)


def test_expected_best_hand_case_as_literal_fractions():
    # values [0.5, 0.9, None, 0.7]; the first k of a random order are a random k-subset (None -> 0):
    # k=1: (0.5 + 0.9 + 0 + 0.7) / 4                                        = 2.1/4 = 21/40
    # k=2: subsets {.5,.9}=.9 {.5,N}=.5 {.5,.7}=.7 {.9,N}=.9 {.9,.7}=.9 {N,.7}=.7 -> 4.6/6 = 23/30
    # k=3: leave one out: -.5 -> .9, -.9 -> .7, -N -> .9, -.7 -> .9         -> 3.4/4 = 17/20
    # k=4: the max                                                                  = 9/10
    by_hand = [Fraction(21, 40), Fraction(23, 30), Fraction(17, 20), Fraction(9, 10)]
    assert budget_curve([0.5, 0.9, None, 0.7]).expected_best == pytest.approx([float(f) for f in by_hand], abs=1e-15)


def test_subsets_without_a_scored_trial_count_as_zero():
    # [None, None, 1.0]: k=1: 1/3; k=2: pairs {N,N}=0 {N,1}=1 {N,1}=1 -> 2/3; k=3: 1
    curve = budget_curve([None, None, 1.0])
    assert curve.expected_best == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_expected_best_equals_brute_force_over_all_orders(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    # Few distinct values, so ties among values and unscored trials both occur.
    values = [None if rng.random() < 0.25 else float(rng.choice([0.1, 0.35, 0.6, 0.8, 0.95])) for _ in range(n)]
    if all(v is None for v in values):
        values[0] = 0.5
    expected = [float(e) for e in brute_force_expected_best(values)]
    assert budget_curve(values, orders=50).expected_best == pytest.approx(expected, rel=1e-13, abs=1e-15)


def test_scored_values_below_zero_still_lose_to_nothing_but_scored_ones():
    # A scored trial always beats an unscored one (None never wins), even when it scored below 0.
    values = [-0.5, None, 1.0]
    expected = [float(e) for e in brute_force_expected_best(values)]
    assert budget_curve(values, orders=50).expected_best == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("n", [2, 5000, 100_000])
def test_expected_best_matches_the_closed_form_for_ranks_at_large_n(n):
    # For the values 1..n the expected maximum of a random k-subset is k (n+1) / (k+1).
    k = np.arange(1, n + 1)
    got = stats._expected_best(np.arange(1, n + 1, dtype=float))
    np.testing.assert_allclose(got, k * (n + 1) / (k + 1), rtol=1e-13)


def test_expected_best_does_not_depend_on_the_chunk_size(monkeypatch):
    values = np.sort(np.random.default_rng(3).random(400))
    whole = stats._expected_best(values)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 1000)  # many small row blocks
    np.testing.assert_allclose(stats._expected_best(values), whole, rtol=1e-14)


def test_expected_best_rises_with_k_and_ends_at_the_max():
    values = [float(v) for v in np.random.default_rng(4).random(300)] + [None] * 20
    curve = budget_curve(values)
    assert np.all(np.diff(curve.expected_best) >= -1e-15)
    assert curve.expected_best[-1] == max(v for v in values if v is not None)
    assert curve.expected_best[0] == pytest.approx(sum(v for v in values if v is not None) / len(values), rel=1e-12)


# --- budget curve: the band over random orders ---------------------------------------------------


def test_band_brackets_the_expectation_and_closes_at_the_max():
    values = [float(v) for v in np.random.default_rng(5).uniform(0.5, 1.0, 60)]
    curve = budget_curve(values, rng_seed=1)
    assert len(curve.low) == len(curve.high) == len(curve.expected_best) == 60
    # Up to k = 0.9 n; from k/n >= 0.95 on, 95 % of orders hold the max: both edges are the max,
    # the expectation just below it.
    bracketed = list(zip(curve.low, curve.expected_best, curve.high))[:54]
    assert all(lo <= e <= hi for lo, e, hi in bracketed)
    assert curve.low[57 - 1] == curve.high[57 - 1] == max(values) > curve.expected_best[57 - 1]
    assert curve.low[0] < curve.high[0]
    assert curve.low[-1] == curve.high[-1] == curve.expected_best[-1] == max(values)


def test_band_is_the_5th_and_95th_percentile_over_orders():
    # Against the exact distribution over all 720 orders: at each k, about 5 % of orders do worse
    # than ``low`` and about 5 % better than ``high`` (2000 sampled orders: sd 0.005; slack 0.02).
    values = [0.2, 0.4, None, 0.6, 0.8, 1.0]
    curve = budget_curve(values, rng_seed=7, orders=2000)
    all_orders = np.array([[0.0 if v is None else v for v in order] for order in itertools.permutations(values)])
    best = np.maximum.accumulate(all_orders, axis=1)
    for k in range(len(values)):
        col = best[:, k]
        assert np.mean(col < curve.low[k]) <= 0.05 + 0.02 and np.mean(col <= curve.low[k]) >= 0.05 - 0.02
        assert np.mean(col > curve.high[k]) <= 0.05 + 0.02 and np.mean(col >= curve.high[k]) >= 0.05 - 0.02


def test_band_is_reproducible_by_seed_and_independent_of_chunking(monkeypatch):
    values = [float(v) for v in np.random.default_rng(8).random(200)]
    first = budget_curve(values, rng_seed=3)
    assert budget_curve(values, rng_seed=3) == first
    assert budget_curve(values, rng_seed=4).low != first.low
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 999)  # permutations in row chunks, band in column blocks
    chunked = budget_curve(values, rng_seed=3)
    assert (chunked.low, chunked.high) == (first.low, first.high)
    np.testing.assert_allclose(chunked.expected_best, first.expected_best, rtol=1e-14)


# --- budget curve: share within 2 %, trials to 1 %, edge cases ------------------------------------


def test_share_within_2pct_and_trials_to_1pct_on_a_literal_example():
    # best 1.0: within 2 % means >= 0.98 (0.992, 1.0 and 0.98 itself; 0.97 and None are not): 3 of 6.
    # The first within 1 % (>= 0.99) is 0.992, the 3rd trial run (1-based), before the best itself.
    curve = budget_curve([0.5, None, 0.992, 0.97, 1.0, 0.98])
    assert curve.share_within_2pct == 0.5
    assert curve.trials_to_1pct == 3


@pytest.mark.parametrize("values", [[None, None], [0.0, None, 0.0], [-0.2, -0.1]])
def test_no_scored_trial_or_best_not_above_zero_gives_zero_curves(values):
    curve = budget_curve(values)
    assert curve.expected_best == curve.low == curve.high == (0.0,) * len(values)
    assert curve.share_within_2pct is None and curve.trials_to_1pct is None


@pytest.mark.parametrize(
    "values, orders, message",
    [
        ([], 2000, "at least one trial"),
        ([0.5, float("nan")], 2000, r"scored values\[1\] is nan"),
        ([0.5, float("inf")], 2000, "finite"),
        ([0.5], 0, "orders is 0"),
    ],
)
def test_budget_curve_refuses_bad_input(values, orders, message):
    with pytest.raises(ValueError, match=message):
        budget_curve(values, orders=orders)


# --- seed statistics ------------------------------------------------------------------------------


def test_seed_stats_three_seeds_by_hand():
    # mean 0.9; deviations -0.1, 0, 0.1 -> variance 0.02/2 = 0.01, std 0.1;
    # t(0.975, df=2) = 4.302653 -> CI 0.9 +- 4.302653 * 0.1 / sqrt(3)
    s = seed_stats([0.8, 0.9, 1.0])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert s.n == 3
    assert s.mean == pytest.approx(0.9, abs=1e-15)
    assert s.std == pytest.approx(0.1, abs=1e-15)
    assert s.ci_low == pytest.approx(0.9 - half, abs=1e-6)
    assert s.ci_high == pytest.approx(0.9 + half, abs=1e-6)


def test_seed_stats_two_seeds_by_hand():
    # mean 0.8, std sqrt(0.02) (ddof=1, not 0.1 as with ddof=0); t(0.975, df=1) = 12.706205
    # -> half width 12.706205 * sqrt(0.02) / sqrt(2) = 1.2706205
    s = seed_stats([0.7, 0.9])
    assert s.std == pytest.approx(math.sqrt(0.02), abs=1e-15)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.8 - 1.2706205, 0.8 + 1.2706205), abs=1e-6)


def test_seed_stats_one_seed_has_no_spread():
    assert seed_stats([0.87]) == stats.SeedStats(n=1, mean=0.87, std=0.0, ci_low=0.87, ci_high=0.87)
    assert not seed_stats([0.87]).spread_measured  # its collapsed interval is no measurement


def test_seed_stats_identical_values_are_exact():
    # 3 * 0.9 / 3 would carry rounding residue into the mean and std.
    assert seed_stats([0.9, 0.9, 0.9]) == stats.SeedStats(n=3, mean=0.9, std=0.0, ci_low=0.9, ci_high=0.9)
    assert not seed_stats([0.9, 0.9]).spread_measured and seed_stats([0.9, 0.91]).spread_measured


@pytest.mark.parametrize("values, message", [([], "at least one value"), ([0.9, float("nan")], r"values\[1\] is nan")])
def test_seed_stats_refuses_bad_input(values, message):
    with pytest.raises(ValueError, match=message):
        seed_stats(values)


# --- the tie rule ---------------------------------------------------------------------------------


def test_clearly_separated_samples_are_not_tied():
    ranked = rank_and_tie({"sgd": [0.50, 0.51, 0.52], "adam": [0.90, 0.91, 0.92]})
    assert [r.name for r in ranked] == ["adam", "sgd"]
    assert ranked[0] == TieResult("adam", seed_stats([0.90, 0.91, 0.92]), tied=True, p_value=None)
    assert ranked[1].tied is False and ranked[1].p_value < 1e-4


def test_overlapping_samples_are_tied():
    ranked = rank_and_tie({"a": [0.90, 0.92, 0.94], "b": [0.89, 0.91, 0.95]})
    assert ranked[1].tied is True and ranked[1].p_value > 0.5


def test_welch_p_value_by_hand_and_alpha():
    # means 0.9 and 0.7, both variances 0.01, n 3: t = 0.2 / sqrt(0.01/3 + 0.01/3) = sqrt(6);
    # Welch df = (2/300)^2 / (2 (1/300)^2 / 2) = 4. For 4 degrees of freedom the two-sided tail is
    # 1 - (3/4) (t / sqrt(4 + t^2)) * 2 (1 - t^2 / (3 (4 + t^2)))... = 1 - 0.6 sqrt(2.4) with t^2 = 6.
    p = 1 - 0.6 * math.sqrt(2.4)  # 0.0704840
    samples = {"x": [0.6, 0.7, 0.8], "y": [0.8, 0.9, 1.0]}
    at_5 = rank_and_tie(samples)
    assert at_5[1].name == "x" and at_5[1].p_value == pytest.approx(p, rel=1e-9)
    assert at_5[1].tied is True  # p 0.070 >= 0.05
    assert rank_and_tie(samples, alpha=0.10)[1].tied is False
    assert rank_and_tie(samples, alpha=at_5[1].p_value)[1].tied is True  # p == alpha does not reject


def test_zero_variance_on_both_sides():
    equal = rank_and_tie({"b": [0.9, 0.9, 0.9], "a": [0.9, 0.9, 0.9, 0.9]})
    assert [(r.name, r.tied, r.p_value) for r in equal] == [("a", True, None), ("b", True, 1.0)]
    apart = rank_and_tie({"a": [0.8, 0.8, 0.8], "b": [0.9, 0.9, 0.9]})
    assert [(r.name, r.tied, r.p_value) for r in apart] == [("b", True, None), ("a", False, 0.0)]


def test_zero_variance_on_one_side_uses_welch():
    ranked = rank_and_tie({"a": [0.9, 0.9, 0.9], "b": [0.80, 0.90, 0.95]})
    assert ranked[1].name == "b" and 0.0 < ranked[1].p_value < 1.0 and ranked[1].tied is True


def test_fewer_than_three_seeds_on_either_side_is_not_tested():
    ranked = rank_and_tie({"a": [0.95], "b": [0.80, 0.85], "c": [0.5]})
    assert [(r.name, r.tied, r.p_value) for r in ranked] == [("a", True, None), ("b", None, None), ("c", None, None)]
    ranked = rank_and_tie({"a": [0.95, 0.96], "b": [0.5, 0.6, 0.7]})
    assert [(r.name, r.tied, r.p_value) for r in ranked] == [("a", True, None), ("b", None, None)]
    assert stats.MIN_TIE_SEEDS == 3


def test_two_seeds_never_call_optimizers_fifty_points_apart_tied():
    """With 2 seeds a side Welch's test has ~1 degree of freedom and rejects almost nothing: the
    report showed every row tied, this one included. Below 3 seeds no tie is called at all."""
    samples = {"adam": [0.97, 0.96], "sgd": [0.20, 0.72]}
    assert sps_welch_p(samples["adam"], samples["sgd"]) > 0.05  # what the old rule called a tie
    ranked = rank_and_tie(samples)
    assert [(r.name, r.tied, r.p_value) for r in ranked] == [("adam", True, None), ("sgd", None, None)]
    assert rank_and_tie(samples, min_seeds=2)[1].tied is True  # the powerless test, asked for explicitly
    with pytest.raises(ValueError, match="min_seeds"):
        rank_and_tie(samples, min_seeds=1)


def sps_welch_p(a, b) -> float:
    from scipy import stats as sps

    return float(sps.ttest_ind(a, b, equal_var=False).pvalue)


def test_ordering_by_mean_then_name_whatever_the_mapping_order():
    samples = {"rmsprop": [0.70, 0.72], "sgd": [0.80, 0.82], "adam": [0.80, 0.82], "adamw": [0.90, 0.91]}
    expected = ["adamw", "adam", "sgd", "rmsprop"]
    assert [r.name for r in rank_and_tie(samples)] == expected
    assert [r.name for r in rank_and_tie(dict(reversed(list(samples.items()))))] == expected
    assert rank_and_tie({}) == []


def test_rank_and_tie_names_the_optimizer_without_values():
    with pytest.raises(ValueError, match="optimizer 'sgd': seed_stats needs at least one value"):
        rank_and_tie({"adam": [0.9, 0.8], "sgd": []})


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_rank_and_tie_refuses_alpha_outside_zero_one(alpha):
    with pytest.raises(ValueError, match="alpha"):
        rank_and_tie({"a": [0.9, 0.8]}, alpha=alpha)


def test_tie_rule_names_the_default_alpha_and_the_seeds_it_needs():
    assert stats.TIE_RULE == (
        "not distinguishable: Welch's t-test against the top-ranked optimizer, two-sided, p >= 0.05, over the "
        "re-evaluation seeds (not a proof of equal means); with fewer than 3 seeds on either side no test is made (n/a)"
    )
    assert stats.ALPHA == 0.05
