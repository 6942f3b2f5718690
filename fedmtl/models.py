"""Shared encoder + one private head per task.

Parameter names are the contract with the wire format: everything under ``encoder.`` is
shared with the server, everything under ``heads.`` stays on the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from fedmtl.config import ModelConfig
from fedmtl.task_kinds import TaskSpec

ENCODER_PREFIX = "encoder."
HEADS_PREFIX = "heads."

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def mlp(widths: Sequence[int], activation: str, final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2 or final_activation:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def build_encoder(cfg: ModelConfig, input_dim: int) -> nn.Sequential:
    return mlp([input_dim, *cfg.encoder_hidden, cfg.representation_dim], cfg.activation, final_activation=True)


def build_head(cfg: ModelConfig, spec: TaskSpec) -> nn.Sequential:
    return mlp([cfg.representation_dim, *cfg.head_hidden, spec.output_dim], cfg.activation, final_activation=False)


class MultiTaskModel(nn.Module):
    """``heads[task](encoder(x))`` for the tasks one client holds."""

    def __init__(self, cfg: ModelConfig, input_dim: int, tasks: Iterable[TaskSpec]) -> None:
        super().__init__()
        self.encoder = build_encoder(cfg, input_dim)
        self.heads = nn.ModuleDict({spec.name: build_head(cfg, spec) for spec in tasks})

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.heads[task](self.encoder(x))

    def shared_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(ENCODER_PREFIX)}

    def private_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith(ENCODER_PREFIX)}


def initial_encoder_state(cfg: ModelConfig, input_dim: int, seed: int) -> dict[str, torch.Tensor]:
    """The round-0 global encoder, identical for every client (the server sends it)."""
    torch.manual_seed(seed)
    encoder = build_encoder(cfg, input_dim)
    return {ENCODER_PREFIX + k: v.detach().clone() for k, v in encoder.state_dict().items()}
