"""Lookahead inter-task affinity on a client's shared encoder (TAG: Fifty, Amid, Zhao, Yu, Anil, Finn,
"Efficiently Identifying Task Groupings for Multi-Task Learning", NeurIPS 2021; code:
github.com/google-research/google-research/tree/master/tag).

On one batch per task, with ``theta`` the shared encoder:

    Z(i -> j) = 1 - L_j(theta - lr * grad_theta L_i(theta)) / L_j(theta)

positive when a step on task ``i`` lowers task ``j``'s loss, negative when it raises it; ``Z(i -> i)``
is the task's own progress. Heads, adapters of other tasks and the data stay as they are; nothing
leaves the client but the numbers, averaged over the round (``client.affinity_every``), which the
server averages over clients (MAS: Zhuang et al., ICCV 2023, measures TAG affinity on the clients
during federated training in the same way).

Where fedmtl differs from TAG's code: the lookahead is a plain SGD step at the client's learning
rate (TAG steps with its optimizer, momentum included), and the losses are measured in evaluation
mode (no dropout, no batch-norm statistics moved), so probing changes nothing in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.func import functional_call

from fedmtl.data.task_kinds import TaskSpec
from fedmtl.local.task_gradients import task_gradient_matrix
from fedmtl.model.networks import MultiTaskModel

Batch = tuple[torch.Tensor, torch.Tensor]  # inputs, targets


@torch.no_grad()
def _losses(
    model: MultiTaskModel,
    batches: Mapping[str, Batch],
    specs: Mapping[str, TaskSpec],
    values: Mapping[str, torch.Tensor],
) -> dict[str, float]:
    """Each task's loss on its batch with the model's parameters replaced by ``values`` (by name)."""
    return {
        task: float(specs[task].kind_impl.loss(functional_call(model, dict(values), (x, task)), y))
        for task, (x, y) in batches.items()
    }


def lookahead_affinity(
    model: MultiTaskModel,
    batches: Mapping[str, Batch],
    specs: Mapping[str, TaskSpec],
    encoder_params: Sequence[torch.nn.Parameter],
    lr: float,
    train_losses: Mapping[str, torch.Tensor],
) -> dict[tuple[str, str], float]:
    """``Z(i -> j)`` for every ordered pair of ``batches``' tasks (``i == j`` included).
    ``train_losses``: each task's training loss on its batch, with its graph (the step's own, kept).
    The lookahead parameters are new tensors: the model's own are never touched."""
    was_training = model.training
    gradients = task_gradient_matrix(dict(train_losses), encoder_params)  # [T, P]
    params = {name: p.detach() for name, p in model.named_parameters()}
    name_of = {id(p): name for name, p in model.named_parameters()}
    encoder = [name_of[id(p)] for p in encoder_params]  # the gradient rows' order
    model.eval()
    try:
        before = _losses(model, batches, specs, params)
        affinity = {}
        for row, source in zip(gradients, train_losses):
            moved, offset = dict(params), 0
            for name in encoder:
                p = params[name]
                moved[name] = p - lr * row[offset : offset + p.numel()].reshape(p.shape)
                offset += p.numel()
            after = _losses(model, batches, specs, moved)
            for target, loss in before.items():
                affinity[(source, target)] = 1.0 - after[target] / loss if loss > 0 else 0.0
    finally:
        model.train(was_training)
    return affinity


class AffinityTracker:
    """Mean of each ordered pair's affinity over the probes of one round."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], float] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, affinity: Mapping[tuple[str, str], float]) -> None:
        for pair, value in affinity.items():
            self.sums[pair] = self.sums.get(pair, 0.0) + value
            self.counts[pair] = self.counts.get(pair, 0) + 1

    def mean(self) -> dict[tuple[str, str], float]:
        return {pair: self.sums[pair] / self.counts[pair] for pair in sorted(self.sums)}


def client_lookahead_affinity(
    model: MultiTaskModel,
    batches: Mapping[str, Batch],
    specs: Mapping[str, TaskSpec],
    base: Mapping[str, torch.Tensor],
    trained: Mapping[int, Mapping[str, torch.Tensor]],
) -> dict[int, float]:
    """Client affinity (``server.client_affinity_every``): for each other client ``i`` of the cohort,
    ``Z(i -> me) = mean over my tasks t of 1 - L_t(theta_i) / L_t(theta)``, with ``theta`` the encoder
    the cohort was sent last round, ``theta_i`` what client ``i`` trained from it (its whole round's
    update as the lookahead step, TAG's rule with clients in place of tasks), and this client's own
    heads and data. Positive: ``i``'s round would have lowered my losses. The evaluation of other
    clients' models on one's own data is FedFomo's (Zhang et al., ICLR 2021). The model's parameters
    are never touched; losses in evaluation mode."""
    was_training = model.training
    params = {name: p.detach() for name, p in model.named_parameters()}
    model.eval()
    try:
        before = _losses(model, batches, specs, {**params, **base})
        affinity = {}
        for client, state in sorted(trained.items()):
            after = _losses(model, batches, specs, {**params, **state})
            ratios = [1.0 - after[t] / loss if loss > 0 else 0.0 for t, loss in before.items()]
            affinity[client] = sum(ratios) / len(ratios)
    finally:
        model.train(was_training)
    return affinity
