"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics").

Variant: the regression form for every task, ``sum_t 0.5 * (exp(-s_t) L_t + s_t)`` with
learnable ``s_t = log sigma_t^2`` starting at ``initial_log_variance`` (0 by default). For fixed
losses the optimum is ``s_t = log L_t``, i.e. weight ``0.5 / L_t``. The ``s_t`` are private
client state and persist across rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.methods.balancing.base import Balancer, BalancerRound, StateDict

PREFIX = "log_variance."


@dataclass(frozen=True)
class Uncertainty(Balancer):
    name: ClassVar[str] = "uncertainty"
    initial_log_variance: float = 0.0

    def start(self, tasks: Sequence[str], state: Mapping[str, torch.Tensor]) -> BalancerRound:
        initial = {t: state.get(PREFIX + t, torch.tensor(self.initial_log_variance)) for t in tasks}
        return _UncertaintyRound({t: torch.nn.Parameter(v.detach().clone().float()) for t, v in initial.items()})


class _UncertaintyRound(BalancerRound):
    def __init__(self, log_variances: dict[str, torch.nn.Parameter]) -> None:
        self.log_variances = log_variances

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.log_variances.values())

    def terms(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            t: 0.5 * (torch.exp(-self.log_variances[t]) * loss + self.log_variances[t]) for t, loss in losses.items()
        }

    def weights(self) -> dict[str, float]:
        return {t: 0.5 * float(torch.exp(-s.detach())) for t, s in self.log_variances.items()}

    def state(self) -> StateDict:
        return {PREFIX + t: s.detach().clone() for t, s in self.log_variances.items()}
