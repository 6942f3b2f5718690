"""Task balancing inside a client: how per-task losses become one objective.

A balancer is a frozen dataclass of hyperparameters (config ``client.balancing``). For each
round it opens a :class:`BalancerRound`, which may own learnable parameters (trained with the
model), update its weights after each backward pass, and hand back state that persists across
rounds as *private* client state (it never leaves the client, like the heads).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch

from fedmtl.core.registry import Component, Registry

StateDict = dict[str, torch.Tensor]
# Returns the gradient of a scalar w.r.t. the last shared layer (GradNorm's W), keeping the graph.
SharedLayerGrad = Callable[[torch.Tensor], torch.Tensor]


class BalancerRound(ABC):
    # True when after_backward differentiates the losses again (GradNorm): the training loop then
    # keeps the autograd graph through the main backward pass.
    differentiates_after_backward: ClassVar[bool] = False

    """The balancer's working state for one round of local training."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """Learnable parameters to train jointly with the model (uncertainty weighting)."""
        return []

    @abstractmethod
    def terms(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-task terms whose sum is minimised (e.g. ``w_t * L_t``)."""

    def after_backward(self, losses: Mapping[str, torch.Tensor], shared_layer_grad: SharedLayerGrad) -> None:  # noqa: B027
        """Called after the model's backward pass, before the optimizer step (GradNorm's weight update)."""

    def end_round(self, mean_losses: Mapping[str, float]) -> None:  # noqa: B027
        """Called once after the round with each task's mean training loss (DWA's history)."""

    @abstractmethod
    def weights(self) -> dict[str, float]:
        """The effective loss weight of each task now (for diagnostics)."""

    def state(self) -> StateDict:
        """Private state to persist across rounds."""
        return {}


class Balancer(Component):
    REGISTRY: ClassVar[Registry] = Registry("balancer", ("fedmtl.methods.balancing",))
    task_keyed: ClassVar[tuple[str, ...]] = ()  # fields that map task names to values (checked against the suite)

    @abstractmethod
    def start(self, tasks: Sequence[str], state: Mapping[str, torch.Tensor]) -> BalancerRound:
        """Open a round for ``tasks``, resuming from the persisted ``state`` (empty the first time)."""
