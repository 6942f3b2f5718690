"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran & Bartlett, ICML 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from fedmtl.methods.aggregation.base import AggregationInput, AggregationResult, Aggregator
from fedmtl.methods.aggregation.order_statistics import column_trimmed_mean


def trim_count(beta: float, rows: int) -> int:
    """Values removed from *each* end of every column: ``floor(beta K)`` (a guard absorbs float error,
    so that ``beta = 0.3`` trims 3 of 10)."""
    return min(math.floor(beta * rows + 1e-9), (rows - 1) // 2)  # at least one value stays


@dataclass(frozen=True)
class TrimmedMean(Aggregator):
    """Coordinate-wise ``beta``-trimmed mean (Yin et al., ICML 2018), Byzantine-robust.

    Rule: for every coordinate, drop the ``b = floor(beta K)`` largest and the ``b`` smallest of the
    K values and average the remaining ``K - 2b``. ``beta`` in ``[0, 1/2)``, so at least one value
    remains; ``beta = 0`` is the plain mean. Robust to up to ``b`` Byzantine rows (the paper asks
    ``beta`` to exceed the Byzantine fraction). The paper writes ``beta K`` values per side; with
    ``beta K`` not an integer this implementation rounds down (trims less).

    torchjd 0.18.0's ``TrimmedMean(trim_number=b)`` is exactly this rule, but it sorts every column
    whole; selecting only the ``b`` extremes per column (:mod:`.order_statistics`) is much faster, and
    the tests check the two agree.

    Not a linear combination of the rows, so ``weights`` is ``None``. ``num_examples`` is ignored
    (one vote per reply: the counts are self-reported). Mean-scaled: K identical rows give that row.
    """

    name: ClassVar[str] = "trimmed_mean"
    beta: float = 0.1  # share of values trimmed off each end of every coordinate, in [0, 0.5)

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {self.beta}")

    def aggregate(self, inputs: AggregationInput) -> AggregationResult:
        return AggregationResult(direction=column_trimmed_mean(inputs.matrix, trim_count(self.beta, inputs.num_rows)))
