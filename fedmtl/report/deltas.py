"""Relative deltas, Delta_m, worst task, seed spread, and the paired test behind every flag.

Pure functions of numbers. The per-task relative change and its mean over tasks are those of
Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR 2019 (also used by LibMTL):

    delta_t = (-1)^{l_t} (M_mtl,t - M_stl,t) / M_stl,t,    l_t = 1 when lower is better,
    Delta_m = mean_t delta_t.

Deltas are fractions (0.6 means +60 %); positive means the arm is better than its baseline
(higher is better: the sign of LibMTL's Delta_p; Nash-MTL and others report -Delta_m).
Whether a delta is beyond seed noise is decided by one test, :func:`paired_t_test`, whose
p-value (adjusted for multiple tests by :func:`holm` or :func:`benjamini_hochberg`) and interval are
reported beside every flag: worse than a single-task arm with p below the significance level is
negative transfer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from scipy import stats

Key = TypeVar("Key")

ZERO_TOLERANCE = 1e-12
"""Differences this small count as ties (floating-point noise between identical runs)."""


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of ``n`` values."""

    mean: float
    std: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def finite_spread(deltas: Iterable[float]) -> Spread:
    """:func:`mean_std` of the deltas that are not NaN (a zero baseline gives no delta)."""
    return mean_std(x for x in deltas if not math.isnan(x))


def relative_delta(value: float, baseline: float, higher_is_better: bool) -> float:
    """``(-1)^l (value - baseline) / baseline`` (Maninis et al., 2019); NaN when the baseline is 0."""
    if baseline == 0:
        return math.nan
    sign = 1.0 if higher_is_better else -1.0
    return sign * (value - baseline) / baseline


def paired_deltas(
    reference: Mapping[Key, float], baseline: Mapping[Key, float], higher_is_better: bool, relative: bool = True
) -> dict[Key, float]:
    """Relative delta per shared key (seed or client), keys sorted; keys present on one side only are dropped.
    ``relative=False``: the signed absolute difference ``(-1)^l (value - baseline)`` instead."""
    shared = sorted(set(reference) & set(baseline))  # type: ignore[type-var]
    if not relative:
        sign = 1.0 if higher_is_better else -1.0
        return {key: sign * (reference[key] - baseline[key]) for key in shared}
    return {key: relative_delta(reference[key], baseline[key], higher_is_better) for key in shared}


def delta_m(deltas: Iterable[float]) -> float:
    """``Delta_m``: the mean of the per-task deltas (Maninis et al., 2019); NaN for no tasks."""
    values = list(deltas)
    return math.fsum(values) / len(values) if values else math.nan


def worst_task(deltas: Mapping[str, float]) -> tuple[str, float]:
    """The task with the smallest delta (ties: the first in mapping order); NaN deltas are ignored."""
    finite = {task: value for task, value in deltas.items() if not math.isnan(value)}
    if not finite:
        raise ValueError(f"no finite delta among tasks {sorted(deltas)}")
    task = min(finite, key=finite.__getitem__)
    return task, finite[task]


def mean_std(values: Iterable[float]) -> Spread:
    """Mean and sample std (ddof = 1) over seeds; std is 0 for one value, both NaN for none."""
    data = list(values)
    n = len(data)
    if n == 0:
        return Spread(math.nan, math.nan, 0)
    mean = math.fsum(data) / n
    if n == 1:
        return Spread(mean, 0.0, 1)
    variance = math.fsum((x - mean) ** 2 for x in data) / (n - 1)
    return Spread(mean, math.sqrt(variance), n)


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired Student-t test of the mean delta against 0, and its confidence interval.

    ``unit``: what was paired ("seeds", or "clients" when there are fewer than two seeds); None
    when fewer than two finite pairs leave the noise unknown (then every number is NaN / None).
    """

    unit: str | None
    pairs: int
    mean: float
    low: float
    high: float
    p_value: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": TEST_NAME,
            "unit": self.unit,
            "pairs": self.pairs,
            "mean": self.mean,
            "ci": [self.low, self.high],
            "confidence": CONFIDENCE,
            "p_value": self.p_value,
        }


TEST_NAME = "paired t-test"
CONFIDENCE = 0.95
NO_TEST = PairedTest(None, 0, math.nan, math.nan, math.nan, None)


def paired_t_test(deltas: Sequence[float], unit: str, tolerance: float = ZERO_TOLERANCE) -> PairedTest:
    """Two-sided one-sample t-test of paired deltas against 0 and the 95 % t-interval of their mean.

    ``t = mean / (std / sqrt(n))`` with ``n - 1`` degrees of freedom (Student 1908), the same
    quantity as ``scipy.stats.ttest_1samp``; the interval is ``mean ± t_{0.975, n-1} std / sqrt(n)``,
    so "p < 0.05" and "the interval excludes 0" are the same statement. NaN deltas are dropped.
    With no spread at all the test is degenerate: every delta within ``tolerance`` of 0 gives
    p = 1 (identical arms), a common nonzero delta gives p = 0 (a consistent difference).
    """
    spread = finite_spread(deltas)
    if spread.n < 2:
        return NO_TEST
    if spread.std <= tolerance:
        p_value = 1.0 if abs(spread.mean) <= tolerance else 0.0
        return PairedTest(unit, spread.n, spread.mean, spread.mean, spread.mean, p_value)
    error = spread.std / math.sqrt(spread.n)
    statistic = spread.mean / error
    p_value = float(2 * stats.t.sf(abs(statistic), spread.n - 1))
    half_width = float(stats.t.ppf((1 + CONFIDENCE) / 2, spread.n - 1)) * error
    return PairedTest(unit, spread.n, spread.mean, spread.mean - half_width, spread.mean + half_width, p_value)


def paired_test(seed_deltas: Sequence[float], client_deltas: Sequence[float]) -> PairedTest:
    """The t-test over paired seeds when two or more seeds have a delta, else over paired clients."""
    for unit, deltas in (("seeds", seed_deltas), ("clients", client_deltas)):
        test = paired_t_test(deltas, unit)
        if test.unit is not None:
            return test
    return NO_TEST


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (Holm, Scand. J. Statist. 1979): family-wise error control.

    Sorted ascending, ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over the ``m`` p-values
    present; None entries (no test) stay None and do not count in ``m``.
    """
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values (J. R. Statist. Soc. B 1995): false-discovery-rate control.

    ``p~_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the ``m`` p-values present
    (``scipy.stats.false_discovery_control``); None entries stay None.
    """
    present = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if present:
        values = stats.false_discovery_control([p_values[i] for i in present], method="bh")
        for index, value in zip(present, values):
            adjusted[index] = float(value)
    return adjusted


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}
CORRECTION_NAMES = {"holm": "Holm (family-wise error)", "bh": "Benjamini-Hochberg (false discovery rate)"}

Verdict = Literal["worse", "better", "no difference"]


def verdict(mean: float, p_value: float | None, significance: float) -> Verdict | None:
    """``worse`` / ``better`` when the (adjusted) p-value is below ``significance``, by the sign of the
    mean delta; ``no difference`` otherwise; None when there was no test."""
    if p_value is None or math.isnan(mean):
        return None
    if p_value >= significance or mean == 0:
        return "no difference"
    return "better" if mean > 0 else "worse"
