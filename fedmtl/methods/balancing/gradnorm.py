"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks").

The rule as the paper states it (Section 3): on the last shared layer ``W``,
``G_i = ||grad_W (w_i L_i)|| = w_i ||grad_W L_i||``,
``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``, and the loss
``sum_i |G_i - mean(G) * r_i^alpha|`` with the target ``mean(G) * r_i^alpha`` held constant.
Its gradient reaches the weights ``w`` only (``||grad_W L_i||`` is detached, so nothing leaks
into the network's gradient); after a step of plain gradient descent with ``lr`` the weights
are clamped positive and renormalised to ``sum w = K``.

``L_i(0)`` is the first loss the client ever saw for task ``i``; it and ``w`` persist across
rounds as private client state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.methods.balancing.base import Balancer, BalancerRound, SharedLayerGrad, StateDict

WEIGHT, INITIAL_LOSS = "gradnorm_weight.", "gradnorm_initial_loss."
_MIN_WEIGHT = 1e-4


@dataclass(frozen=True)
class GradNorm(Balancer):
    name: ClassVar[str] = "gradnorm"
    alpha: float = 1.5
    lr: float = 0.025

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.lr <= 0:
            raise ValueError("need alpha >= 0 and lr > 0")

    def start(self, tasks: Sequence[str], state: Mapping[str, torch.Tensor]) -> BalancerRound:
        weights = torch.stack([state.get(WEIGHT + t, torch.tensor(1.0)).float() for t in tasks])
        initial = {t: state[INITIAL_LOSS + t] for t in tasks if INITIAL_LOSS + t in state}
        return GradNormRound(list(tasks), weights, initial, self.alpha, self.lr)


def gradnorm_step(
    weights: torch.Tensor, grad_norms: torch.Tensor, loss_ratios: torch.Tensor, alpha: float, lr: float
) -> torch.Tensor:
    """One GradNorm update of the weights. ``grad_norms[i] = ||grad_W L_i||`` (unweighted, detached),
    ``loss_ratios[i] = L_i / L_i(0)``. Returns the new weights, renormalised to sum to K."""
    w = weights.detach().clone().requires_grad_(True)
    weighted_norms = w * grad_norms.detach()
    relative_rate = loss_ratios / loss_ratios.mean()
    target = (weighted_norms.mean() * relative_rate**alpha).detach()
    (torch.abs(weighted_norms - target).sum()).backward()
    with torch.no_grad():
        assert w.grad is not None  # backward() above filled it
        updated = (w - lr * w.grad).clamp_min(_MIN_WEIGHT)
        return updated * (len(updated) / updated.sum())


class GradNormRound(BalancerRound):
    differentiates_after_backward: ClassVar[bool] = True

    def __init__(
        self, tasks: list[str], weights: torch.Tensor, initial: dict[str, torch.Tensor], alpha: float, lr: float
    ) -> None:
        self.tasks, self.w, self.initial, self.alpha, self.lr = tasks, weights, dict(initial), alpha, lr

    def terms(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for t, loss in losses.items():
            self.initial.setdefault(t, loss.detach().clone())
        return {t: self.w[self.tasks.index(t)] * loss for t, loss in losses.items()}

    def after_backward(self, losses: Mapping[str, torch.Tensor], shared_layer_grad: SharedLayerGrad) -> None:
        active = [t for t in self.tasks if t in losses]
        if len(active) < 2:
            return
        norms = torch.stack([shared_layer_grad(losses[t]).norm() for t in active])
        ratios = torch.stack([losses[t].detach() / self.initial[t].clamp_min(1e-12) for t in active])
        index = [self.tasks.index(t) for t in active]
        updated = gradnorm_step(self.w[index], norms, ratios, self.alpha, self.lr)
        # keep sum w = K over all tasks: the active ones keep their share of the total
        self.w[index] = updated * (self.w[index].sum() / updated.sum())

    def weights(self) -> dict[str, float]:
        return {t: float(w) for t, w in zip(self.tasks, self.w)}

    def state(self) -> StateDict:
        state = {WEIGHT + t: w.clone() for t, w in zip(self.tasks, self.w)}
        state.update({INITIAL_LOSS + t: v.clone() for t, v in self.initial.items()})
        return state
