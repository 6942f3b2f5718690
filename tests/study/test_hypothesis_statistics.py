"""Property-based tests (Hypothesis) of the study's statistics against SciPy and their defining
formulas: the paired t-test and its interval, Holm's and Benjamini-Hochberg's adjustments, relative
deltas, Delta_m, the worst task, and the verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats

from fedmtl.report import deltas as d

VALUES = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)
P_VALUES = st.floats(0, 1, allow_nan=False)
METRICS = st.floats(1e-3, 1e3, allow_nan=False)


@given(values=st.lists(VALUES, min_size=2, max_size=20))
def test_paired_t_test_matches_scipy_and_its_interval_is_the_test_inverted(values):
    spread = float(np.std(values, ddof=1))
    assume(spread > 1e-6 * (1 + max(abs(v) for v in values)))
    test = d.paired_t_test(values, "seeds")
    reference = stats.ttest_1samp(values, 0.0)
    assert test.pairs == len(values) and test.unit == "seeds"
    assert test.p_value == pytest.approx(float(reference.pvalue), rel=1e-6, abs=1e-12)
    assert test.mean == pytest.approx(float(np.mean(values)), abs=1e-9)
    low, high = reference.confidence_interval(0.95)
    assert (test.low, test.high) == (pytest.approx(float(low), abs=1e-9), pytest.approx(float(high), abs=1e-9))
    if abs(test.p_value - 0.05) > 1e-9:  # p < 0.05 exactly when the 95 % interval excludes 0
        assert (test.p_value < 0.05) == (test.low > 0 or test.high < 0)


@given(values=st.lists(VALUES, min_size=0, max_size=1), nan_count=st.integers(0, 3))
def test_fewer_than_two_finite_pairs_give_no_test(values, nan_count):
    assert d.paired_t_test([*values, *[math.nan] * nan_count], "seeds") == d.NO_TEST


@given(value=VALUES, n=st.integers(2, 10))
def test_no_spread_is_a_degenerate_test(value, n):
    test = d.paired_t_test([value] * n, "clients")
    assert test.p_value == (1.0 if abs(value) <= d.ZERO_TOLERANCE else 0.0)
    assert test.low == test.high == pytest.approx(value)


@given(p_values=st.lists(st.one_of(st.none(), P_VALUES), max_size=12))
def test_holm_is_the_step_down_maximum_and_never_lowers_a_p_value(p_values):
    adjusted = d.holm(p_values)
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(present)
    ordered = sorted(present)
    for rank, (p, index) in enumerate(ordered):  # Holm 1979, written out
        expected = max(min(1.0, (m - j) * ordered[j][0]) for j in range(rank + 1))
        assert adjusted[index] == pytest.approx(expected)
        assert p <= adjusted[index] <= 1.0
    assert [a is None for a in adjusted] == [p is None for p in p_values]
    # monotone: a smaller raw p-value never gets a larger adjusted one
    for (_, i), (_, j) in zip(ordered, ordered[1:]):
        assert adjusted[i] <= adjusted[j]


@given(p_values=st.lists(P_VALUES, min_size=1, max_size=12))
def test_benjamini_hochberg_matches_its_formula_and_is_never_above_holm(p_values):
    adjusted = d.benjamini_hochberg(p_values)
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    ranked = np.array(p_values)[order]
    # p~_(i) = min_{j >= i} min(1, m p_(j) / j) (Benjamini & Hochberg 1995), written out
    expected_sorted = [min(min(1.0, m * ranked[j] / (j + 1)) for j in range(i, m)) for i in range(m)]
    for rank, index in enumerate(order):
        assert adjusted[index] == pytest.approx(expected_sorted[rank], abs=1e-12)
    holm = d.holm(p_values)
    assert all(b <= h + 1e-12 for b, h in zip(adjusted, holm))
    assert all(p <= b + 1e-12 for p, b in zip(p_values, adjusted))


@given(value=METRICS, baseline=METRICS, higher=st.booleans(), factor=st.floats(1e-3, 1e3))
def test_relative_delta_is_scale_free_and_flips_with_the_direction(value, baseline, higher, factor):
    delta = d.relative_delta(value, baseline, higher)
    assert delta == pytest.approx((value - baseline) / baseline * (1 if higher else -1))
    assert d.relative_delta(value * factor, baseline * factor, higher) == pytest.approx(delta, rel=1e-9, abs=1e-12)
    assert d.relative_delta(value, baseline, not higher) == pytest.approx(-delta)
    assert d.relative_delta(baseline, baseline, higher) == 0.0
    assert (delta > 0) == ((value > baseline) == higher) or value == baseline


@given(value=VALUES, higher=st.booleans())
def test_a_zero_baseline_gives_no_delta(value, higher):
    assert math.isnan(d.relative_delta(value, 0.0, higher))


@given(per_task=st.dictionaries(st.text("abcdef", min_size=1, max_size=3), VALUES, min_size=1, max_size=6))
def test_delta_m_is_the_mean_and_the_worst_task_its_minimum(per_task):
    assert d.delta_m(per_task.values()) == pytest.approx(math.fsum(per_task.values()) / len(per_task))
    task, value = d.worst_task({**per_task, "nan-task": math.nan})
    assert value == min(per_task.values()) and per_task[task] == value
    assert task == next(t for t, v in per_task.items() if v == value)  # ties: the first in order


@given(mean=VALUES, p=st.one_of(st.none(), P_VALUES), significance=st.floats(0.001, 0.5))
def test_verdict_follows_the_sign_and_the_threshold(mean, p, significance):
    verdict = d.verdict(mean, p, significance)
    if p is None:
        assert verdict is None
    elif p >= significance or mean == 0:
        assert verdict == "no difference"
    else:
        assert verdict == ("better" if mean > 0 else "worse")


@given(values=st.lists(st.one_of(VALUES, st.just(math.nan)), max_size=10))
def test_finite_spread_ignores_nan_and_uses_the_sample_std(values):
    finite = [v for v in values if not math.isnan(v)]
    spread = d.finite_spread(values)
    assert spread.n == len(finite)
    if len(finite) >= 2:
        assert spread.mean == pytest.approx(float(np.mean(finite)), abs=1e-9)
        assert spread.std == pytest.approx(float(np.std(finite, ddof=1)), abs=1e-9)
    elif len(finite) == 1:
        assert (spread.mean, spread.std) == (finite[0], 0.0)
    else:
        assert math.isnan(spread.mean) and math.isnan(spread.std)
