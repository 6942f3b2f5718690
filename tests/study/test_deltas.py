"""Delta arithmetic against hand-computed values (Maninis et al., CVPR 2019), the paired t-test and the corrections."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedmtl.report import deltas as d


def test_relative_delta_higher_is_better() -> None:
    # (0.8 - 0.5) / 0.5 = +60 %; the other way round (0.5 - 0.8) / 0.8 = -37.5 %
    assert d.relative_delta(0.8, 0.5, higher_is_better=True) == pytest.approx(0.6)
    assert d.relative_delta(0.5, 0.8, higher_is_better=True) == pytest.approx(-0.375)


def test_relative_delta_lower_is_better_flips_the_sign() -> None:
    # mse 0.5 vs 0.8: -(0.5 - 0.8) / 0.8 = +37.5 % (lower error is an improvement); mse 1.0 vs 0.8: -25 %
    assert d.relative_delta(0.5, 0.8, higher_is_better=False) == pytest.approx(0.375)
    assert d.relative_delta(1.0, 0.8, higher_is_better=False) == pytest.approx(-0.25)


def test_relative_delta_of_a_zero_baseline_is_nan() -> None:
    assert math.isnan(d.relative_delta(0.3, 0.0, higher_is_better=True))


def test_delta_m_and_worst_task() -> None:
    per_task = {"accuracy_task": d.relative_delta(0.8, 0.5, True), "mse_task": d.relative_delta(1.0, 0.8, False)}
    assert d.delta_m(per_task.values()) == pytest.approx((0.6 - 0.25) / 2)
    assert d.worst_task(per_task) == ("mse_task", pytest.approx(-0.25))
    assert d.worst_task({"a": math.nan, "b": 0.1}) == ("b", 0.1)
    assert math.isnan(d.delta_m([]))


def test_paired_deltas_use_shared_keys_only() -> None:
    assert d.paired_deltas({0: 0.8, 1: 0.6, 2: 0.9}, {0: 0.5, 1: 0.6}, True) == {0: pytest.approx(0.6), 1: 0.0}


def test_mean_std_is_the_sample_std() -> None:
    spread = d.mean_std([1.0, 2.0, 3.0])
    assert (spread.mean, spread.std, spread.n) == (2.0, 1.0, 3)
    assert d.mean_std([5.0]) == d.Spread(5.0, 0.0, 1)
    assert d.mean_std([]).n == 0


def test_identical_arms_give_p_one_and_no_difference() -> None:
    test = d.paired_t_test([0.0] * 6, "seeds")
    assert (test.p_value, test.low, test.high, test.pairs) == (1.0, 0.0, 0.0, 6)
    assert d.paired_t_test([1e-15, -1e-15, 0.0], "seeds").p_value == 1.0
    assert d.verdict(0.0, 1.0, 0.05) == "no difference"


def test_t_test_matches_scipy_and_the_hand_computed_interval() -> None:
    deltas = [-0.20, -0.21, -0.19, -0.25]
    test = d.paired_t_test(deltas, "seeds")
    assert test.p_value == pytest.approx(stats.ttest_1samp(deltas, 0.0).pvalue)
    spread = d.mean_std(deltas)
    half = 3.182446305284263 * spread.std / math.sqrt(4)  # t_{0.975, 3}
    assert (test.low, test.high) == (pytest.approx(spread.mean - half), pytest.approx(spread.mean + half))
    assert d.verdict(test.mean, test.p_value, 0.05) == "worse"
    assert d.verdict(-test.mean, test.p_value, 0.05) == "better"


def test_p_below_the_level_exactly_when_the_interval_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        deltas = list(rng.normal(rng.normal(0, 0.05), 0.1, size=int(rng.integers(2, 12))))
        test = d.paired_t_test(deltas, "seeds")
        assert test.p_value is not None
        assert (test.p_value < 0.05) == (test.high < 0 or test.low > 0)


def test_a_consistent_difference_without_spread_is_significant() -> None:
    assert d.paired_t_test([-0.1, -0.1], "seeds").p_value == 0.0


def test_noise_around_zero_is_no_difference_and_one_pair_is_no_test() -> None:
    noisy = d.paired_t_test([-0.11, 0.09, -0.01], "seeds")
    assert noisy.p_value is not None and noisy.p_value > 0.5
    assert d.verdict(noisy.mean, noisy.p_value, 0.05) == "no difference"
    assert d.paired_t_test([-0.5], "seeds") == d.NO_TEST
    assert d.paired_t_test([-0.5, math.nan], "seeds") == d.NO_TEST
    assert d.verdict(-0.5, None, 0.05) is None


def test_paired_test_falls_back_to_clients() -> None:
    assert d.paired_test([-0.1], [-0.1, -0.2, -0.3]).unit == "clients"
    assert d.paired_test([-0.1, -0.2], [0.0] * 9).unit == "seeds"
    assert d.paired_test([-0.1], [-0.1]) == d.NO_TEST


def test_holm_against_hand_computed_values() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005, 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    adjusted = d.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), pytest.approx(0.02)]
    assert d.holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert d.holm([]) == []


def test_benjamini_hochberg_against_hand_computed_values_and_scipy() -> None:
    # m p_(i) / i from the top: 0.04, min(0.04, 4 * 0.03 / 3), 4 * 0.01 / 2, min(0.02, 4 * 0.005)
    p_values = [0.01, 0.04, 0.03, 0.005]
    adjusted = d.benjamini_hochberg(p_values)
    assert adjusted == [pytest.approx(0.02), pytest.approx(0.04), pytest.approx(0.04), pytest.approx(0.02)]
    assert d.benjamini_hochberg([None, 0.2]) == [None, pytest.approx(0.2)]


def test_holm_is_never_less_conservative_than_benjamini_hochberg() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        p_values = list(rng.uniform(0, 0.2, size=int(rng.integers(1, 10))))
        for holm, bh, raw in zip(d.holm(p_values), d.benjamini_hochberg(p_values), p_values):
            assert holm is not None and bh is not None
            assert raw <= bh + 1e-15 and bh <= holm + 1e-15


def test_a_nan_delta_is_left_out_of_the_test_and_never_decides_a_verdict() -> None:
    test = d.paired_t_test([0.10, 0.11, 0.12, math.nan], "seeds")
    assert test.pairs == 3 and test.mean == pytest.approx(0.11)
    assert d.verdict(test.mean, test.p_value, 0.05) == "better"
    assert d.verdict(math.nan, 0.01, 0.05) is None
    assert d.finite_spread([0.10, math.nan, 0.12]) == d.Spread(pytest.approx(0.11), pytest.approx(0.01414, rel=1e-3), 2)


def test_the_tolerance_is_inclusive_at_its_edge() -> None:
    """With ``tolerance=0`` exact ties are still ties: no spread gives the degenerate test, and a mean of
    exactly 0 is p = 1 (a strict comparison would divide by a zero standard error)."""
    assert d.paired_t_test([1.0, 1.0], "seeds", tolerance=0.0).p_value == 0.0
    assert d.paired_t_test([0.0, 0.0], "seeds", tolerance=0.0).p_value == 1.0


def test_a_test_is_written_with_every_number_it_rests_on() -> None:
    test = d.paired_t_test([0.1, 0.3, 0.2], "clients")
    assert test.to_dict() == {
        "test": "paired t-test", "unit": "clients", "pairs": 3, "mean": test.mean, "ci": [test.low, test.high],
        "confidence": 0.95, "p_value": test.p_value,
    }  # fmt: skip


def test_no_finite_delta_names_the_tasks() -> None:
    with pytest.raises(ValueError, match=r"no finite delta among tasks \['a', 'b'\]"):
        d.worst_task({"b": math.nan, "a": math.nan})
