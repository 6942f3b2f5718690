"""Shared encoder + one private head per task (+ optional private per-task adapters).

Parameter names are the contract with the wire format: ``encoder.<block>.*`` may be shared
(``model.sharing`` decides which blocks), ``heads.*`` and ``adapters.*`` always stay on the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import nn

from fedmtl.config.experiment import ModelConfig
from fedmtl.core.params import ENCODER_PREFIX, HEADS_PREFIX
from fedmtl.data.task_kinds import TaskSpec

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def mlp(widths: Sequence[int], activation: str, final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2 or final_activation:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def encoder_widths(cfg: ModelConfig, input_dim: int) -> list[int]:
    return [input_dim, *cfg.encoder_hidden, cfg.representation_dim]


def build_encoder(cfg: ModelConfig, input_dim: int, image_shape: tuple[int, int, int] | None = None) -> nn.ModuleList:
    """A list of blocks; block i's parameters are ``encoder.<i>.*`` (the unit of partial sharing)."""
    if cfg.encoder == "cnn":
        if image_shape is None:
            raise ValueError("a cnn encoder needs the image shape")
        return build_cnn_encoder(cfg, image_shape)
    widths = encoder_widths(cfg, input_dim)
    return nn.ModuleList(mlp([a, b], cfg.activation, final_activation=True) for a, b in zip(widths[:-1], widths[1:]))


def build_cnn_encoder(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> nn.ModuleList:
    """Blocks ``conv3x3 -> activation (-> maxpool2)`` on the unflattened image, then ``Linear -> activation``."""
    channels, height, width = image_shape
    blocks: list[nn.Module] = []
    for i, out_channels in enumerate(cfg.conv_channels):
        layers: list[nn.Module] = [nn.Unflatten(1, image_shape)] if i == 0 else []
        layers += [nn.Conv2d(channels, out_channels, 3, padding=1), _ACTIVATIONS[cfg.activation]()]
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        blocks.append(nn.Sequential(*layers))
        channels = out_channels
    blocks.append(
        nn.Sequential(
            nn.Flatten(), nn.Linear(channels * height * width, cfg.representation_dim), _ACTIVATIONS[cfg.activation]()
        )
    )
    return nn.ModuleList(blocks)


def build_head(cfg: ModelConfig, spec: TaskSpec) -> nn.Sequential:
    return mlp([cfg.representation_dim, *cfg.head_hidden, spec.output_dim], cfg.activation, final_activation=False)


class Adapter(nn.Module):
    """Residual bottleneck ``h + up(act(down(h)))`` with ``up`` zero-initialised (identity at start)."""

    def __init__(self, width: int, rank: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class MultiTaskModel(nn.Module):
    """``heads[task](encoder(x; adapters[task]))`` for the tasks one client holds."""

    def __init__(
        self,
        cfg: ModelConfig,
        input_dim: int,
        tasks: Iterable[TaskSpec],
        adapter_rank: int = 0,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        specs = list(tasks)
        self.encoder = build_encoder(cfg, input_dim, image_shape)
        self.heads = nn.ModuleDict({spec.name: build_head(cfg, spec) for spec in specs})
        widths = encoder_widths(cfg, input_dim)[1:]
        self.adapters = nn.ModuleDict(
            {
                spec.name: nn.ModuleList(Adapter(w, adapter_rank, cfg.activation) for w in widths)
                for spec in (specs if adapter_rank > 0 else [])
            }
        )

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        adapters = cast(nn.ModuleList, self.adapters[task]) if task in self.adapters else None
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h)
            if adapters is not None:
                h = adapters[i](h)
        return self.heads[task](h)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters every held task shares (the target of in-client gradient surgery)."""
        return list(self.encoder.parameters())

    def last_shared_layer_weight(self) -> nn.Parameter:
        """GradNorm's ``W``: the weight of the encoder's last linear layer."""
        last_block = cast(nn.Module, self.encoder[-1])
        return cast(
            nn.Parameter, next(m for m in reversed(list(last_block.modules())) if isinstance(m, nn.Linear)).weight
        )


def initial_shared_state(
    cfg: ModelConfig, input_dim: int, seed: int, image_shape: tuple[int, int, int] | None = None
) -> dict[str, torch.Tensor]:
    """The part of the round-0 encoder that ``cfg.sharing`` federates."""
    state = initial_encoder_state(cfg, input_dim, seed, image_shape)
    return {k: v for k, v in state.items() if cfg.sharing.is_shared(k)}


def initial_encoder_state(
    cfg: ModelConfig, input_dim: int, seed: int, image_shape: tuple[int, int, int] | None = None
) -> dict[str, torch.Tensor]:
    """The round-0 encoder, identical for every client (the server sends its shared part)."""
    torch.manual_seed(seed)
    encoder = build_encoder(cfg, input_dim, image_shape)
    return {ENCODER_PREFIX + k: v.detach().clone() for k, v in encoder.state_dict().items()}


def initial_head_state(
    cfg: ModelConfig,
    input_dim: int,
    specs: Iterable[TaskSpec],
    seed: int,
    image_shape: tuple[int, int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Round-0 heads of every task, identical for all clients (only when heads are federated)."""
    torch.manual_seed(seed)
    model = MultiTaskModel(cfg, input_dim, list(specs), 0, image_shape)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(HEADS_PREFIX)}
