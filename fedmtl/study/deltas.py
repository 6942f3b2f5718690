"""Relative deltas, Delta_m, worst task, seed spread, the negative-transfer flag and a paired test.

Pure functions of numbers. The per-task relative change and its mean over tasks are those of
Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR 2019 (also used by LibMTL):

    delta_t = (-1)^{l_t} (M_mtl,t - M_stl,t) / M_stl,t,    l_t = 1 when lower is better,
    Delta_m = mean_t delta_t.

Deltas are fractions (0.6 means +60 %); positive means the reference (multi-task) arm is better.
Negative transfer on task t is "delta_t < 0 beyond seed noise"; :func:`is_negative_transfer`
makes that precise (see its docstring).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from scipy import stats

Key = TypeVar("Key")

NEGATIVE_TRANSFER_CONFIDENCE = 0.95
MIN_WILCOXON_PAIRS = 5
"""Fewer pairs give no p-value: with 5 pairs the smallest exact two-sided p is already 2 / 2^5 = 0.0625."""
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


def relative_delta(value: float, baseline: float, higher_is_better: bool) -> float:
    """``(-1)^l (value - baseline) / baseline`` (Maninis et al., 2019); NaN when the baseline is 0."""
    if baseline == 0:
        return math.nan
    sign = 1.0 if higher_is_better else -1.0
    return sign * (value - baseline) / baseline


def paired_deltas(
    reference: Mapping[Key, float], baseline: Mapping[Key, float], higher_is_better: bool
) -> dict[Key, float]:
    """Relative delta per shared key (seed or client), keys sorted; keys present on one side only are dropped."""
    shared = sorted(set(reference) & set(baseline))  # type: ignore[type-var]
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


def confidence_upper_bound(deltas: Sequence[float], confidence: float = NEGATIVE_TRANSFER_CONFIDENCE) -> float:
    """Upper end of the two-sided Student-t confidence interval of the mean paired delta.

    ``mean + t_{(1+confidence)/2, n-1} * std / sqrt(n)``; NaN for fewer than two finite values
    (one seed says nothing about seed noise).
    """
    spread = mean_std(d for d in deltas if not math.isnan(d))
    if spread.n < 2:
        return math.nan
    quantile = float(stats.t.ppf((1 + confidence) / 2, spread.n - 1))
    return spread.mean + quantile * spread.std / math.sqrt(spread.n)


def is_negative_transfer(
    deltas: Sequence[float],
    confidence: float = NEGATIVE_TRANSFER_CONFIDENCE,
    tolerance: float = ZERO_TOLERANCE,
) -> bool:
    """Negative transfer: the whole paired confidence interval of the mean delta lies below zero.

    ``deltas`` are the per-seed relative deltas of the reference arm against a baseline arm on
    the same seed (paired). The flag is raised when at least two seeds have a finite delta and

        mean + t_{(1+confidence)/2, n-1} * std / sqrt(n) < -tolerance,

    i.e. the two-sided 95 % Student-t interval of the mean paired delta excludes zero on the
    negative side. Identical arms give deltas of exactly 0 (CI [0, 0]) and are never flagged; a
    consistent loss with no spread (every seed the same negative delta) is flagged.
    """
    upper = confidence_upper_bound(deltas, confidence)
    return not math.isnan(upper) and upper < -tolerance


def wilcoxon_p_value(
    deltas: Sequence[float], min_pairs: int = MIN_WILCOXON_PAIRS, tolerance: float = ZERO_TOLERANCE
) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired deltas against 0 (scipy.stats.wilcoxon).

    NaN pairs are dropped; ``None`` when fewer than ``min_pairs`` remain. Deltas within
    ``tolerance`` of 0 are ties; when every pair is a tie the arms are indistinguishable and the
    p-value is 1 (scipy would divide by zero there).
    """
    finite = [d for d in deltas if not math.isnan(d)]
    if len(finite) < min_pairs:
        return None
    cleaned = [0.0 if abs(d) <= tolerance else d for d in finite]
    if not any(cleaned):
        return 1.0
    with warnings.catch_warnings():
        # zero_method="wilcox" drops ties; scipy warns when it must fall back to the normal approximation.
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.wilcoxon(cleaned, zero_method="wilcox", alternative="two-sided").pvalue)


@dataclass(frozen=True)
class PairedTest:
    """A p-value and the unit whose pairs produced it ("seeds", "clients"), or no test at all."""

    p_value: float | None
    unit: str | None
    pairs: int


def paired_test(
    seed_deltas: Sequence[float], client_deltas: Sequence[float], min_pairs: int = MIN_WILCOXON_PAIRS
) -> PairedTest:
    """Wilcoxon over paired seeds when there are ``min_pairs`` of them, else over paired clients."""
    for unit, deltas in (("seeds", seed_deltas), ("clients", client_deltas)):
        finite = [d for d in deltas if not math.isnan(d)]
        if len(finite) >= min_pairs:
            return PairedTest(wilcoxon_p_value(finite, min_pairs), unit, len(finite))
    return PairedTest(None, None, 0)
