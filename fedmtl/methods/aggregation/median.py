"""Coordinate-wise median (Yin, Chen, Ramchandran & Bartlett, ICML 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedmtl.methods.aggregation.base import AggregationInput, AggregationResult, Aggregator
from fedmtl.methods.aggregation.order_statistics import column_median


@dataclass(frozen=True)
class CoordinateMedian(Aggregator):
    """Coordinate-wise median (Yin et al., ICML 2018), Byzantine-robust.

    Rule: ``direction_p = median_k G[k, p]`` for every coordinate ``p``; with an even number of rows
    the median is the mean of the two middle values (the usual definition; ``torch.median`` would
    return the lower one). Robust while fewer than half of the rows are Byzantine: one huge row moves
    each coordinate by at most one rank.

    Not a linear combination of the rows (every coordinate may take a different row), so ``weights``
    is ``None``. ``num_examples`` is ignored: the published rule gives every reply one vote, and the
    counts are self-reported, so a Byzantine client could claim a large one. Mean-scaled: K
    identical rows give that row.
    """

    name: ClassVar[str] = "median"

    def aggregate(self, inputs: AggregationInput) -> AggregationResult:
        return AggregationResult(direction=column_median(inputs.matrix))
