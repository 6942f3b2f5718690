"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-End Multi-Task Learning
with Attention").

``w_k = K exp(r_k / T) / sum_i exp(r_i / T)`` with ``r_k = L_k(t-1) / L_k(t-2)``, where the
paper's epochs are rounds here: ``L_k`` is task k's mean training loss over a round. Weights
are 1 until two rounds of history exist. The loss history is private client state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.methods.balancing.base import Balancer, BalancerRound, StateDict

PREVIOUS, BEFORE = "dwa_loss_prev.", "dwa_loss_before."


def dwa_weights(previous: torch.Tensor, before: torch.Tensor, temperature: float) -> torch.Tensor:
    rates = previous / before.clamp_min(1e-12)
    return len(rates) * torch.softmax(rates / temperature, dim=0)


@dataclass(frozen=True)
class DWA(Balancer):
    name: ClassVar[str] = "dwa"
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def start(self, tasks: Sequence[str], state: Mapping[str, torch.Tensor]) -> BalancerRound:
        have_history = all(PREVIOUS + t in state and BEFORE + t in state for t in tasks)
        if have_history:
            weights = dwa_weights(
                torch.stack([state[PREVIOUS + t] for t in tasks]),
                torch.stack([state[BEFORE + t] for t in tasks]),
                self.temperature,
            )
        else:
            weights = torch.ones(len(tasks))
        return _DWARound(list(tasks), weights, dict(state))


class _DWARound(BalancerRound):
    def __init__(self, tasks: list[str], weights: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        self.tasks, self.w, self._state = tasks, weights, state

    def terms(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task's loss times its own weight (``w_k L_k``)."""
        return {t: self.w[self.tasks.index(t)] * loss for t, loss in losses.items()}

    def end_round(self, mean_losses: Mapping[str, float]) -> None:
        for t, loss in mean_losses.items():
            if PREVIOUS + t in self._state:
                self._state[BEFORE + t] = self._state[PREVIOUS + t]
            self._state[PREVIOUS + t] = torch.tensor(float(loss))

    def weights(self) -> dict[str, float]:
        return {t: float(w) for t, w in zip(self.tasks, self.w)}

    def state(self) -> StateDict:
        return {k: v.clone() for k, v in self._state.items() if k.startswith((PREVIOUS, BEFORE))}
