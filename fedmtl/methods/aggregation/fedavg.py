"""FedAvg: the example-weighted mean of client updates (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.methods.aggregation.base import AggregationInput, AggregationResult, Aggregator
from fedmtl.methods.aggregation.gramian import combine_rows


@dataclass(frozen=True)
class FedAvg(Aggregator):
    """``sum_k n_k g_k / sum_k n_k``; with ``weighted: false``, the plain mean."""

    name: ClassVar[str] = "fedavg"
    weighted: bool = True

    @property
    def uniform_mean(self) -> bool:
        return not self.weighted

    @property
    def mean_of_rows(self) -> bool:
        return True

    def aggregate(self, inputs: AggregationInput) -> AggregationResult:
        counts = inputs.num_examples.to(torch.float64)
        if not self.weighted:
            counts = torch.ones_like(counts)
        weights = counts / counts.sum()
        return AggregationResult(
            direction=combine_rows(weights, inputs.matrix), weights=weights.to(inputs.matrix.dtype)
        )
