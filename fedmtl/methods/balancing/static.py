"""Static loss weights from the config (the multi-task baseline: equal weights by default)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from fedmtl.methods.balancing.base import Balancer, BalancerRound


@dataclass(frozen=True)
class Static(Balancer):
    """``sum_t w_t L_t`` with ``w_t`` from ``weights`` (1 for tasks not listed)."""

    name: ClassVar[str] = "static"
    task_keyed: ClassVar[tuple[str, ...]] = ("weights",)
    weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights must be >= 0")

    def start(self, tasks: Sequence[str], state: Mapping[str, torch.Tensor]) -> BalancerRound:
        return _StaticRound({t: float(self.weights.get(t, 1.0)) for t in tasks})


class _StaticRound(BalancerRound):
    def __init__(self, weights: dict[str, float]) -> None:
        self._weights = weights

    def terms(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self._weights[t] * loss for t, loss in losses.items()}

    def weights(self) -> dict[str, float]:
        return dict(self._weights)
