"""Local multi-task training and evaluation on one client (no Flower, no Ray).

One loop serves every configuration: task sampling picks the step's tasks, the balancer turns
their losses into terms, optional gradient surgery replaces the encoder's gradient by an
aggregate of the per-task gradients (the same aggregators the server uses), an optional
proximal pull adds ``mu (theta - reference)`` to the encoder's gradient, and a tracker records
per-task gradient conflicts every ``gradient_diagnostics_every`` steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedmtl.config.sections import ClientConfig
from fedmtl.data.suites import TaskData
from fedmtl.data.task_kinds import TaskSpec
from fedmtl.local.affinity import AffinityTracker, lookahead_affinity
from fedmtl.local.task_gradients import TaskGradientTracker, task_gradient_matrix, write_flat_gradient
from fedmtl.methods.aggregation import AggregationInput
from fedmtl.methods.balancing import BalancerRound
from fedmtl.methods.optimizers import OptimizerSettings
from fedmtl.model.networks import MultiTaskModel


@dataclass(frozen=True)
class Proximal:
    """``mu/2 ||encoder - reference||^2`` (FedProx/Ditto), applied as a gradient term."""

    reference: list[torch.Tensor]
    mu: float


@dataclass
class TrainStats:
    task_loss: dict[str, float]  # mean training loss per task over the steps that trained it
    num_examples: int  # training samples held (sum over tasks): FedAvg's weight
    task_weights: dict[str, float] = field(default_factory=dict)  # balancer weights at the end of the round
    task_cosines: dict[tuple[str, str], float] = field(default_factory=dict)  # mean pairwise cosine
    subspace_angles: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # degrees
    task_affinity: dict[tuple[str, str], float] = field(default_factory=dict)  # mean lookahead Z(i -> j)


def batch_indices(size: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of batches: a fresh permutation per pass, so every sample is seen once per epoch."""
    if size < 1:
        raise ValueError("cannot draw batches from an empty task")
    while True:
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, batch_size):
            yield order[start : start + batch_size]


def make_optimizer(cfg: ClientConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``client.optimizer`` over ``params`` with the client's learning rate, momentum and weight decay."""
    return cfg.optimizer.make(
        params, OptimizerSettings(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    )


def trained_parameters(model: MultiTaskModel, cfg: ClientConfig) -> dict[str, torch.nn.Parameter]:
    """The parameters local training moves: all of the model's, the encoder's only with ``train_encoder``."""
    frozen = set() if cfg.train_encoder else {id(p) for p in model.encoder_parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) not in frozen}


def task_batches(
    data: Mapping[str, TaskData],
    cfg: ClientConfig,
    generator: torch.Generator,
    joint_groups: Sequence[Sequence[str]] = (),
) -> tuple[dict[str, TaskData], dict[str, Iterator[torch.Tensor]], dict[str, int]]:
    """The tasks with data (a real split can leave one empty), each one's endless batches, and sizes. The
    tasks of a joint head (``joint_groups``) with as many examples as each other, the same examples, draw
    one stream of batches: a step trains every label set of the same examples (multi-label training)."""
    data = {task: d for task, d in data.items() if len(d) > 0}
    batches = {task: batch_indices(len(d), cfg.batch_size, generator) for task, d in data.items()}
    for group in joint_groups:
        sizes = {task: len(data[task]) for task in group if task in data}
        for size in set(sizes.values()):
            same = [task for task, n in sizes.items() if n == size]
            if len(same) >= 2:
                batches.update(zip(same, itertools.tee(batch_indices(size, cfg.batch_size, generator), len(same))))
    return data, batches, {task: len(d) for task, d in data.items()}


def train_local(
    model: MultiTaskModel,
    data: Mapping[str, TaskData],
    specs: Mapping[str, TaskSpec],
    cfg: ClientConfig,
    generator: torch.Generator,
    balancer: BalancerRound,
    proximal: Proximal | None = None,
) -> TrainStats:
    data, batches, sizes = task_batches(data, cfg, generator, model.joint_groups)
    encoder_params = model.encoder_parameters()
    optimizer = make_optimizer(cfg, [*trained_parameters(model, cfg).values(), *balancer.parameters()])
    tracker = TaskGradientTracker(cfg.subspace_steps)
    affinity = AffinityTracker()
    totals, counts = dict.fromkeys(data, 0.0), dict.fromkeys(data, 0)

    def shared_layer_grad(loss: torch.Tensor) -> torch.Tensor:  # looked up only when a balancer asks (GradNorm)
        return torch.autograd.grad(loss, model.last_shared_layer_weight(), retain_graph=True)[0]

    model.train()
    for step in range(cfg.local_steps):
        tasks = cfg.task_sampling.choose(sizes, generator)
        optimizer.zero_grad(set_to_none=True)
        losses, step_batches = {}, {}
        for task in tasks:
            index = next(batches[task])
            step_batches[task] = (data[task].x[index], data[task].y[index])
            losses[task] = specs[task].kind_impl.loss(model(step_batches[task][0], task), step_batches[task][1])
        if cfg.affinity_every > 0 and step % cfg.affinity_every == 0:
            affinity.add(lookahead_affinity(model, step_batches, specs, encoder_params, cfg.lr, losses))
        terms = balancer.terms(losses)
        measure = cfg.gradient_diagnostics_every > 0 and step % cfg.gradient_diagnostics_every == 0
        surgery = cfg.surgery if len(tasks) > 1 else None
        matrix = (
            task_gradient_matrix(terms, encoder_params)
            if (surgery is not None or (measure and len(tasks) > 1))
            else None
        )
        torch.stack(list(terms.values())).sum().backward(retain_graph=balancer.differentiates_after_backward)
        if surgery is not None and matrix is not None:
            ones = torch.ones(len(tasks), dtype=torch.float64)
            # task gradients are few and small: the exact Gramian costs nothing next to a training step
            direction = surgery(
                AggregationInput(matrix, ones, generator=generator, gramian_precision="float64")
            ).direction
            write_flat_gradient(encoder_params, direction * len(tasks))  # sum-scaled, like the plain sum of terms
        if proximal is not None:
            with torch.no_grad():
                for p, ref in zip(encoder_params, proximal.reference):
                    if p.grad is not None:
                        p.grad.add_(p - ref, alpha=proximal.mu)
        if measure and matrix is not None:
            tracker.add(tasks, matrix.detach())
        balancer.after_backward(losses, shared_layer_grad)
        optimizer.step()
        for task, loss in losses.items():
            totals[task] += loss.item()
            counts[task] += 1
    mean_losses = {t: totals[t] / counts[t] for t in data if counts[t]}
    balancer.end_round(mean_losses)
    return TrainStats(
        task_loss=mean_losses,
        num_examples=sum(sizes.values()),
        task_weights=balancer.weights(),
        task_cosines=tracker.mean_cosines(),
        subspace_angles=tracker.subspace_angles(),
        task_affinity=affinity.mean(),
    )


def fit_heads(
    model: MultiTaskModel,
    data: Mapping[str, TaskData],
    specs: Mapping[str, TaskSpec],
    cfg: ClientConfig,
    steps: int,
    generator: torch.Generator,
) -> None:
    """``steps`` optimizer steps on the summed task losses that move only the heads of ``data``'s tasks:
    the encoder (and any adapter) stays as received. FedRep's head update (Collins et al., "Exploiting
    Shared Representations for Personalized Federated Learning", ICML 2021), run in eval mode so that
    nothing but the heads changes."""
    data = {task: d for task, d in data.items() if len(d) > 0}
    if steps == 0 or not data:
        return
    for param in model.parameters():
        param.requires_grad_(False)
    heads = [param for task in data for param in model.heads[task].parameters()]
    for param in heads:
        param.requires_grad_(True)
    optimizer = make_optimizer(cfg, heads)
    batches = {task: batch_indices(len(d), cfg.batch_size, generator) for task, d in data.items()}
    model.eval()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for task, task_data in data.items():
            index = next(batches[task])
            losses.append(specs[task].kind_impl.loss(model(task_data.x[index], task), task_data.y[index]))
        torch.stack(losses).sum().backward()
        optimizer.step()


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, data: Mapping[str, TaskData], specs: Mapping[str, TaskSpec]
) -> dict[str, dict[str, float]]:
    """Per task: loss, the kind's metrics, and the number of samples evaluated."""
    model.eval()
    results = {}
    for task, task_data in data.items():
        if len(task_data) == 0:
            continue
        kind = specs[task].kind_impl
        prediction = model(task_data.x, task)
        results[task] = {
            "loss": kind.loss(prediction, task_data.y).item(),
            **kind.metrics(prediction, task_data.y),
            "num_examples": float(len(task_data)),
        }
    return results
