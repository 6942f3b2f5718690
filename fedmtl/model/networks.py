"""Shared encoder + one private head per task (+ optional private per-task adapters or gates).

Parameter names are the contract with the wire format: ``encoder.<block>.*`` may be shared
(``model.sharing`` decides which blocks; under a mixture of experts ``encoder.<expert>.<block>.*``),
``heads.*``, ``adapters.*`` and ``gates.*`` always stay on the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import cast

import torch
from torch import nn

from fedmtl.core.errors import ConfigError
from fedmtl.core.params import ENCODER_PREFIX, HEADS_PREFIX
from fedmtl.core.seeding import seed_global
from fedmtl.data.task_kinds import TaskSpec
from fedmtl.model.config import ModelConfig
from fedmtl.model.encoders import ACTIVATIONS, ImageShape, mlp


def build_encoder(cfg: ModelConfig, input_dim: int, image_shape: ImageShape | None = None) -> nn.ModuleList:
    """A list of blocks; block i's parameters are ``encoder.<i>.*`` (the unit of partial sharing). Under a
    mixture of experts (``model.sharing.num_experts``), a list of experts, each the blocks in sequence."""
    experts = cfg.sharing.num_experts
    if experts:
        return nn.ModuleList(nn.Sequential(*cfg.encoder.build(cfg, input_dim, image_shape)) for _ in range(experts))
    return cfg.encoder.build(cfg, input_dim, image_shape)


def mixture_weights(gate: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A task's gate on a batch: ``softmax(W_t x)``, one row of expert weights per example."""
    return torch.softmax(gate(x.flatten(1).float()), dim=1)


def mixed(experts: nn.ModuleList, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_e weights[:, e] * expert_e(x)`` for outputs of any shape (vectors or feature maps)."""
    out = torch.stack([expert(x) for expert in experts], dim=1)
    return (weights.reshape(*weights.shape, *([1] * (out.dim() - 2))) * out).sum(dim=1)


def zero_gate(input_dim: int, experts: int) -> nn.Linear:
    gate = nn.Linear(input_dim, experts)
    nn.init.zeros_(gate.weight)
    nn.init.zeros_(gate.bias)
    return gate


def representation_shape(
    encoder: nn.ModuleList | nn.Sequential, input_dim: int, example: torch.Tensor | None = None
) -> tuple[int, ...]:
    """The shape of one example's encoder output: ``(width,)``, or ``(channels, height, width)`` for an
    encoder that keeps a feature map (found by running ``example``, by default two zero inputs, through it)."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        h = torch.zeros(2, input_dim) if example is None else example
        for block in encoder:
            h = block(h)
    encoder.train(was_training)
    return tuple(h.shape[1:])


class DenseHead(nn.Module):
    """A per-pixel decoder: ``conv3x3 -> activation`` per ``head_hidden`` width at the feature map's
    resolution, a ``1x1`` conv to the task's channels, then bilinear upsampling to the image's size (the
    heads of FCN and of MTI-Net / FedHCA²'s task decoders, at small scale)."""

    def __init__(self, channels: int, hidden: tuple[int, ...], out: int, size: tuple[int, int], activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Conv2d(channels, width, 3, padding=1), ACTIVATIONS[activation]()]
            channels = width
        layers.append(nn.Conv2d(channels, out, 1))
        self.decode = nn.Sequential(*layers)
        self.size = size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.decode(h), size=self.size, mode="bilinear", align_corners=False)


def head_problem(spec: TaskSpec, representation: tuple[int, ...], image_shape: ImageShape | None) -> str | None:
    """Why ``spec``'s head cannot sit on an encoder whose output is ``representation``, or None."""
    if spec.kind_impl.dense and (image_shape is None or len(representation) != 3):
        return (
            f"task {spec.name!r} is per-pixel ({spec.kind}): it needs an image suite and an encoder whose "
            f"output is a feature map [channels, height, width]; this encoder's output is {list(representation)}"
        )
    if len(representation) not in (1, 3):
        return (
            f"the encoder's output per example must be [width] or [channels, height, width], got {list(representation)}"
        )
    return None


def build_head(
    cfg: ModelConfig, spec: TaskSpec, representation: tuple[int, ...], image_shape: ImageShape | None = None
) -> nn.Module:
    """An MLP on a vector representation; on a feature map, a :class:`DenseHead` for a per-pixel task and
    global average pooling then the MLP for any other."""
    problem = head_problem(spec, representation, image_shape)
    if problem:
        raise ValueError(problem)
    if spec.kind_impl.dense and image_shape is not None:
        return DenseHead(representation[0], cfg.head_hidden, spec.output_dim, image_shape[1:], cfg.activation)
    head = mlp([representation[0], *cfg.head_hidden, spec.output_dim], cfg.activation, final_activation=False)
    if len(representation) == 1:
        return head
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def last_weighted_layer(block: nn.Module) -> nn.Linear | nn.Conv2d | None:
    """The last ``nn.Linear`` or ``nn.Conv2d`` of ``block`` (GradNorm's ``W``), or None."""
    layers = [m for m in block.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1] if layers else None


class Adapter(nn.Module):
    """Residual bottleneck ``h + up(act(down(h)))`` with ``up`` zero-initialised (identity at start)."""

    def __init__(self, width: int, rank: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class JointSlice(nn.Module):
    """One task's slice ``[start, stop)`` of a joint head's output (``model.joint_heads``): every task of the
    group holds the same ``joint`` module, so its parameters are one tensor under each task's key."""

    def __init__(self, joint: nn.Module, start: int, stop: int) -> None:
        super().__init__()
        self.joint, self.start, self.stop = joint, start, stop

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.joint(h)[:, self.start : self.stop]


def held_joint_groups(cfg: ModelConfig, tasks: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The joint heads (``model.joint_heads``) of which a participant holding ``tasks`` holds two tasks or
    more, each as the held tasks in the group's order."""
    groups = (tuple(t for t in group if t in tasks) for group in cfg.joint_heads)
    return tuple(held for held in groups if len(held) >= 2)


def build_heads(
    cfg: ModelConfig, specs: list[TaskSpec], representation: tuple[int, ...], image_shape: ImageShape | None
) -> dict[str, nn.Module]:
    """Each task's head: its own, or its slice of a joint head (``model.joint_heads``) that outputs the
    classes of the group's tasks this participant holds, in the group's order (one held: its own head)."""
    by_name = {spec.name: spec for spec in specs}
    heads: dict[str, nn.Module] = {}
    for group in held_joint_groups(cfg, list(by_name)):
        held = [by_name[t] for t in group]
        joint_spec = replace(held[0], name="+".join(s.name for s in held), num_classes=sum(s.output_dim for s in held))
        joint = build_head(cfg, joint_spec, representation, image_shape)
        start = 0
        for spec in held:
            heads[spec.name] = JointSlice(joint, start, start + spec.output_dim)
            start += spec.output_dim
    for spec in specs:
        if spec.name not in heads:
            heads[spec.name] = build_head(cfg, spec, representation, image_shape)
    return {spec.name: heads[spec.name] for spec in specs}


class MultiTaskModel(nn.Module):
    """``heads[task](encoder(x; adapters[task]))`` for the tasks one client holds."""

    def __init__(
        self,
        cfg: ModelConfig,
        input_dim: int,
        tasks: Iterable[TaskSpec],
        adapter_rank: int = 0,
        image_shape: ImageShape | None = None,
    ) -> None:
        super().__init__()
        specs = list(tasks)
        self.encoder = build_encoder(cfg, input_dim, image_shape)
        experts = cfg.sharing.num_experts
        declared = cfg.encoder.output_shape(cfg, input_dim, image_shape)  # no forward pass on every build
        if declared is not None:
            representation = declared
        else:
            one_expert = cast(nn.Sequential, self.encoder[0]) if experts else self.encoder
            representation = representation_shape(one_expert, input_dim)
        self.heads = nn.ModuleDict(build_heads(cfg, specs, representation, image_shape))
        self.joint_groups = held_joint_groups(cfg, list(self.heads))  # they train on the same batches
        widths = cfg.encoder.block_widths(cfg, input_dim) if adapter_rank > 0 else []
        self.adapters = nn.ModuleDict(
            {
                spec.name: nn.ModuleList(Adapter(w, adapter_rank, cfg.activation) for w in widths)
                for spec in (specs if adapter_rank > 0 else [])
            }
        )
        self.gates = nn.ModuleDict({spec.name: zero_gate(input_dim, experts) for spec in (specs if experts else [])})

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        if task in self.gates:
            return self.heads[task](mixed(self.encoder, self.gate_weights(x, task), x))
        adapters = cast(nn.ModuleList, self.adapters[task]) if task in self.adapters else None
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h)
            if adapters is not None:
                h = adapters[i](h)
        return self.heads[task](h)

    def gate_weights(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """``[batch, experts]``: how ``task``'s gate mixes the experts on ``x`` (mixture of experts only)."""
        return mixture_weights(self.gates[task], x)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters every held task shares (the target of in-client gradient surgery)."""
        return list(self.encoder.parameters())

    def last_shared_layer_weight(self) -> nn.Parameter:
        """GradNorm's ``W``: the weight of the encoder's last linear or convolutional layer (under a mixture
        of experts, the last expert's)."""
        layer = last_weighted_layer(cast(nn.Module, self.encoder[-1]))
        if layer is None:
            raise ValueError("GradNorm needs an nn.Linear or nn.Conv2d in the encoder's last block; this one has none")
        return cast(nn.Parameter, layer.weight)


def initial_shared_state(
    cfg: ModelConfig, input_dim: int, seed: int, image_shape: ImageShape | None = None
) -> dict[str, torch.Tensor]:
    """The part of the round-0 encoder that ``cfg.sharing`` federates."""
    state = initial_encoder_state(cfg, input_dim, seed, image_shape)
    return {k: v for k, v in state.items() if cfg.sharing.is_shared(k)}


def initial_encoder_state(
    cfg: ModelConfig, input_dim: int, seed: int, image_shape: ImageShape | None = None
) -> dict[str, torch.Tensor]:
    """The round-0 encoder, identical for every client (the server sends its shared part): drawn from
    ``seed``, or read from ``cfg.init_from``."""
    seed_global(seed)
    encoder = build_encoder(cfg, input_dim, image_shape)
    state = {ENCODER_PREFIX + k: v.detach().clone() for k, v in encoder.state_dict().items()}
    if cfg.init_from is None:
        return state
    return encoder_from_file(cfg.init_from, state)


def encoder_from_file(path: str, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder in ``path`` (a state dict, or an ``encoder.pt`` of one group), checked against the
    keys and shapes of ``expected``; ConfigError (``model.init_from``) when it does not fit."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same config error
        raise ConfigError("model.init_from", f"cannot read {path}: {err}") from None
    if isinstance(loaded, Mapping) and loaded and all(isinstance(v, Mapping) for v in loaded.values()):
        if len(loaded) != 1:  # an encoder.pt of several groups
            raise ConfigError("model.init_from", f"{path} holds the encoders of {sorted(loaded)}: save one")
        (loaded,) = loaded.values()
    if not isinstance(loaded, Mapping):
        raise ConfigError("model.init_from", f"{path} is not a state dict")
    state = {k: v for k, v in loaded.items() if k in expected}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConfigError("model.init_from", f"{path} lacks encoder parameters {missing[:3]}")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise ConfigError(
            "model.init_from", f"{path}: {k} has shape {tuple(state[k].shape)}, the encoder {tuple(expected[k].shape)}"
        )
    return {k: state[k].detach().clone().to(expected[k].dtype) for k in expected}


def initial_head_state(
    cfg: ModelConfig,
    input_dim: int,
    specs: Iterable[TaskSpec],
    seed: int,
    image_shape: ImageShape | None = None,
) -> dict[str, torch.Tensor]:
    """Round-0 heads of every task, identical for all clients (only when heads are federated)."""
    seed_global(seed)
    model = MultiTaskModel(cfg, input_dim, list(specs), 0, image_shape)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(HEADS_PREFIX)}
