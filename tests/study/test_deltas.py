"""Delta arithmetic against hand-computed values (Maninis et al., CVPR 2019), flag rule and Wilcoxon edge cases."""

from __future__ import annotations

import math

import pytest

from fedmtl.study import deltas as d


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


def test_identical_arms_are_never_flagged_and_wilcoxon_does_not_crash() -> None:
    zeros = [0.0] * 6
    assert not d.is_negative_transfer(zeros)
    assert d.wilcoxon_p_value(zeros) == 1.0
    assert d.wilcoxon_p_value([1e-15, -1e-15, 0.0, 0.0, 0.0]) == 1.0


def test_consistent_loss_is_flagged() -> None:
    assert d.is_negative_transfer([-0.20, -0.21, -0.19])
    assert d.is_negative_transfer([-0.1, -0.1])  # no spread at all: every seed loses the same amount
    # five negative pairs: the smallest exact two-sided Wilcoxon p-value, 2 / 2^5
    assert d.wilcoxon_p_value([-0.1, -0.2, -0.3, -0.4, -0.5]) == pytest.approx(2 / 32)


def test_noise_around_zero_and_single_seeds_are_not_flagged() -> None:
    # mean -0.01, std 0.1, n 3: the 95 % interval -0.01 +- 4.30 * 0.1 / sqrt(3) contains 0
    assert not d.is_negative_transfer([-0.11, 0.09, -0.01])
    assert not d.is_negative_transfer([-0.5])
    upper = -0.2 + 4.302652729911275 * d.mean_std([-0.20, -0.21, -0.19]).std / math.sqrt(3)
    assert d.confidence_upper_bound([-0.20, -0.21, -0.19]) == pytest.approx(upper)


def test_paired_test_falls_back_to_clients_and_needs_enough_pairs() -> None:
    assert d.paired_test([-0.1, -0.2], [-0.1, -0.2, -0.3, -0.4, -0.5]) == d.PairedTest(
        pytest.approx(2 / 32), "clients", 5
    )
    assert d.paired_test([-0.1] * 5, [0.0] * 9).unit == "seeds"
    assert d.paired_test([-0.1] * 4, [-0.1] * 4) == d.PairedTest(None, None, 0)
    assert d.wilcoxon_p_value([-0.1, math.nan, -0.2, -0.3, -0.4]) is None
