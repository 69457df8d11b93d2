"""The benchmark's scoring (``sweep.report.profiles``) against numbers worked out by hand from
AlgoPerf's definitions, and its two figures. Quick tier: pure arithmetic and two small PNGs."""

from __future__ import annotations

import copy
import math

import pytest

from sweep.report.benchmark_plots import _same_as, front_figure, profile_figure
from sweep.report.profiles import (
    bootstrap_scores,
    median_times,
    pareto_front,
    performance_ratios,
    profile,
    ranks,
    score,
)

INF = math.inf

# Seconds to the target, [workload][optimizer]; inf = never reached. Nobody reached w3.
TIMES = {
    "w1": {"A": 100.0, "B": 200.0, "C": INF},
    "w2": {"A": 300.0, "B": 100.0, "C": 150.0},
    "w3": {"A": INF, "B": INF, "C": INF},
}
# r = t / fastest on the workload: w1's fastest is A (100 s), w2's is B (100 s), w3 has none.
RATIOS = {
    "w1": {"A": 100 / 100, "B": 200 / 100, "C": INF},  # 1, 2, inf
    "w2": {"A": 300 / 100, "B": 100 / 100, "C": 150 / 100},  # 3, 1, 1.5
    "w3": {"A": INF, "B": INF, "C": INF},  # nobody reached it: every ratio inf
}
TAUS = [1.0, 1.5, 2.0, 3.0, 4.0, 100.0]
# ρ_s(τ) = (number of workloads with r ≤ τ) / 3; w3 never counts.
PROFILE = {
    "A": [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3],  # w1 from τ=1, w2 from τ=3
    "B": [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3],  # w2 from τ=1, w1 from τ=2
    "C": [0.0, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3],  # w2 from τ=1.5
}
# score = area under the step function ρ_s on [1, r_max=4], over (4 − 1) = 3:
#   A: ρ = 1/3 on [1,3), 2/3 on [3,4]    → (1/3)·[(3−1)·(1/3) + (4−3)·(2/3)]   = (1/3)·(4/3) = 4/9
#   B: ρ = 1/3 on [1,2), 2/3 on [2,4]    → (1/3)·[(2−1)·(1/3) + (4−2)·(2/3)]   = (1/3)·(5/3) = 5/9
#   C: ρ = 0 on [1,1.5), 1/3 on [1.5,4]  → (1/3)·[(1.5−1)·0 + (4−1.5)·(1/3)]   = (1/3)·(5/6) = 5/18
SCORES = {"A": 4 / 9, "B": 5 / 9, "C": 5 / 18}


def check_table(times) -> None:
    """The hand-worked ratios, profile and scores of TIMES, asserted against what ``times`` gives."""
    ratios = performance_ratios(times)
    assert ratios == {w: {s: pytest.approx(r) for s, r in row.items()} for w, row in RATIOS.items()}
    assert profile(ratios, TAUS) == {s: pytest.approx(v) for s, v in PROFILE.items()}
    assert score(ratios, r_max=4.0) == {s: pytest.approx(v) for s, v in SCORES.items()}


def test_hand_worked_table():
    check_table(TIMES)
    assert ranks(score(performance_ratios(TIMES))) == {"B": 1, "A": 2, "C": 3}


def test_a_wrong_ratio_fails_the_check():
    """The check above can fail: B's time on w1 changed from 200 s to 250 s (ratio 2.5, not 2)."""
    wrong = copy.deepcopy(TIMES)
    wrong["w1"]["B"] = 250.0
    with pytest.raises(AssertionError):
        check_table(wrong)


def test_a_ratio_above_r_max_adds_nothing_and_ties_share_a_rank():
    # r_max = 2, so each workload adds (2 − r)/(3·1) when r ≤ 2, else nothing:
    #   A: w1 (2−1) = 1, w2 r=3 > 2 adds 0        → 1/3
    #   B: w1 r=2 adds (2−2) = 0, w2 (2−1) = 1    → 1/3
    #   C: w2 (2−1.5) = 0.5                       → 0.5/3 = 1/6
    scores = score(RATIOS, r_max=2.0)
    assert scores == {"A": pytest.approx(1 / 3), "B": pytest.approx(1 / 3), "C": pytest.approx(1 / 6)}
    assert scores["A"] == scores["B"]  # bit-equal, so the tie is a tie
    assert ranks(scores) == {"A": 1, "B": 1, "C": 3}
    assert ranks({"x": 0.5, "y": 0.9, "z": 0.9, "u": 0.1}) == {"y": 1, "z": 1, "x": 3, "u": 4}


def test_fastest_everywhere_scores_one_and_never_reached_scores_zero():
    times = {"w1": {"A": 1.0, "B": 2.0, "C": INF}, "w2": {"A": 5.0, "B": 5.0, "C": INF}}
    scores = score(performance_ratios(times))
    assert scores["A"] == 1.0
    assert scores["C"] == 0.0
    assert scores["B"] == pytest.approx((4 - 2 + 4 - 1) / (2 * 3))  # ratios 2 and 1 (a tie for fastest)


def test_a_missing_optimizer_or_bad_time_is_named():
    times = {"w1": {"A": 1.0, "B": 2.0}, "w2": {"A": 1.0}}
    with pytest.raises(ValueError, match="'B' on 'w2'"):
        performance_ratios(times)
    with pytest.raises(ValueError, match="'B' on 'w2'"):
        profile({"w1": {"A": 1.0, "B": 2.0}, "w2": {"A": 1.0}}, [1.0])
    with pytest.raises(ValueError, match="'A' on 'w1'"):
        performance_ratios({"w1": {"A": 0.0, "B": 2.0}})
    with pytest.raises(ValueError, match="no workloads"):
        score({})


def test_median_times_keep_inf():
    # statistics.median: the middle value (odd count), the mean of the middle two (even count)
    study = {"w": {"odd": [3.0, INF, 1.0], "half": [1.0, INF], "all": [INF, INF], "one": [7.0]}}
    assert median_times(study) == {"w": {"odd": 3.0, "half": INF, "all": INF, "one": 7.0}}


def test_bootstrap_interval():
    one_study = {w: {s: [t] for s, t in row.items()} for w, row in TIMES.items()}
    for s, (low, high) in bootstrap_scores(one_study, draws=50).items():
        assert low == high == pytest.approx(SCORES[s])  # nothing to resample: a single value
    studies = {
        "w1": {"A": [90.0, 100.0, 110.0], "B": [180.0, 200.0, 230.0], "C": [INF, INF, 400.0]},
        "w2": {"A": [280.0, 300.0, 330.0], "B": [95.0, 100.0, 120.0], "C": [140.0, 150.0, 160.0]},
    }
    point = score(performance_ratios(median_times(studies)))
    intervals = bootstrap_scores(studies, draws=300, seed=1)
    assert intervals == bootstrap_scores(studies, draws=300, seed=1)  # seeded: the same interval again
    for s, (low, high) in intervals.items():
        assert low <= point[s] <= high and low < high


def test_pareto_front():
    # (accuracy, seconds): 1 is dominated by 0 (less accurate, slower); 3 by 2 (as accurate, slower)
    points = [(0.9, 10.0), (0.8, 20.0), (0.95, 30.0), (0.95, 40.0), (0.7, 5.0)]
    assert pareto_front(points) == [4, 0, 2]
    assert pareto_front([(0.9, 10.0), (0.9, 10.0), (0.5, 1.0)]) == [2, 0]  # equal points: the first kept
    assert pareto_front([(0.8, 10.0), (0.9, 10.0)]) == [1]  # same time: the more accurate one
    assert pareto_front([(0.5, 3.0)]) == [0]
    assert pareto_front([]) == []


def test_figures_write_pngs(tmp_path):
    profiles = profile(RATIOS, TAUS[:-1]) | {"D": PROFILE["A"][:-1]}  # D's line coincides with A's
    assert _same_as(profiles) == {"D": ("A", 1)}
    path = profile_figure(profiles, TAUS[:-1], tmp_path / "profile.png", r_max=4.0, title="toy benchmark")
    fronts = {
        "w1": {"A": [(5.0, 0.7), (10.0, 0.9)], "B": [(8.0, 0.85)], "C": []},
        "w2": {"A": [(30.0, 0.6)], "B": [(10.0, 0.5), (20.0, 0.65)], "C": [(12.0, 0.55)]},
    }
    front = front_figure(fronts, tmp_path / "fronts.png")
    for png in (path, front):
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
