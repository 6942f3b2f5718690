"""Local multi-task training and evaluation on one client (no Flower, no Ray)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from fedmtl.config import TrainingConfig
from fedmtl.models import MultiTaskModel
from fedmtl.suites import TaskData
from fedmtl.task_kinds import TaskSpec


@dataclass(frozen=True)
class TrainStats:
    task_loss: dict[str, float]  # mean training loss per task over the round's steps
    num_examples: int  # training samples held (sum over tasks): FedAvg's weight


def batch_indices(size: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of batches: a fresh permutation per pass, so every sample is seen once per epoch."""
    while True:
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, batch_size):
            yield order[start : start + batch_size]


def make_optimizer(cfg: TrainingConfig, params: Iterator[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_local(
    model: MultiTaskModel,
    data: Mapping[str, TaskData],
    specs: Mapping[str, TaskSpec],
    cfg: TrainingConfig,
    generator: torch.Generator,
) -> TrainStats:
    """``cfg.local_steps`` steps; each step draws one batch of every task and minimises the weighted sum."""
    optimizer = make_optimizer(cfg, model.parameters())
    weights = {task: cfg.task_weights.get(task, 1.0) for task in data}
    batches = {task: batch_indices(len(d), cfg.batch_size, generator) for task, d in data.items()}
    totals = dict.fromkeys(data, 0.0)
    model.train()
    for _ in range(cfg.local_steps):
        optimizer.zero_grad(set_to_none=True)
        losses = {}
        for task, task_data in data.items():
            index = next(batches[task])
            prediction = model(task_data.x[index], task)
            losses[task] = specs[task].kind_impl.loss(prediction, task_data.y[index])
        torch.stack([weights[t] * loss for t, loss in losses.items()]).sum().backward()
        optimizer.step()
        for task, loss in losses.items():
            totals[task] += loss.item()
    return TrainStats(
        task_loss={task: total / cfg.local_steps for task, total in totals.items()},
        num_examples=sum(len(d) for d in data.values()),
    )


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, data: Mapping[str, TaskData], specs: Mapping[str, TaskSpec]
) -> dict[str, dict[str, float]]:
    """Per task: loss, the kind's metrics, and the number of samples evaluated."""
    model.eval()
    results = {}
    for task, task_data in data.items():
        kind = specs[task].kind_impl
        prediction = model(task_data.x, task)
        results[task] = {
            "loss": kind.loss(prediction, task_data.y).item(),
            **kind.metrics(prediction, task_data.y),
            "num_examples": float(len(task_data)),
        }
    return results
