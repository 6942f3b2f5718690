"""ResNet encoders (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), the backbones
FedHCA² and FMTL-Bench federate, written to torchvision's layout so that a torchvision checkpoint on
disk loads into them (torchvision itself is not a dependency: its CPU build is not in this project's
package registries).

Blocks: ``0`` the stem (``conv1``, ``bn1``, max-pool), ``1``-``4`` torchvision's ``layer1``-``layer4``.
The output is ``layer4``'s feature map ``[C, H / 32, W / 32]`` (``stem: small``: ``H / 8``), on which a
per-pixel task's decoder sits and any other task's head pools. Normalisation keeps nothing but
parameters, so that only parameters cross the wire: ``group`` (GroupNorm, the federated-learning choice
of Hsieh et al., ICML 2020) or ``batch`` (BatchNorm with batch statistics in training and evaluation,
no running averages).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from fedmtl.core.errors import ConfigError, require
from fedmtl.model.encoders import Encoder, ImageShape, ModelConfig

LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
RUNNING_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    return nn.GroupNorm(math.gcd(32, channels), channels)


def conv3x3(fan_in: int, fan_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(fan_in, fan_out, 3, stride=stride, padding=1, bias=False)


def conv1x1(fan_in: int, fan_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(fan_in, fan_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, fan_in: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(fan_in, planes, stride), norm_layer(norm, planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), norm_layer(norm, planes)
        self.relu = nn.ReLU()
        self.downsample = downsample(fan_in, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride on the 3x3 convolution."""

    expansion = 4

    def __init__(self, fan_in: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv1x1(fan_in, planes), norm_layer(norm, planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), norm_layer(norm, planes)
        self.conv3, self.bn3 = conv1x1(planes, planes * 4), norm_layer(norm, planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample(fan_in, planes * 4, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def downsample(fan_in: int, fan_out: int, stride: int, norm: str) -> nn.Sequential | None:
    if stride == 1 and fan_in == fan_out:
        return None
    return nn.Sequential(conv1x1(fan_in, fan_out, stride), norm_layer(norm, fan_out))


class Stem(nn.Module):
    """The flat input reshaped to the image, then ``conv1 -> bn1 -> relu (-> maxpool)``: torchvision's
    7x7 stride-2 convolution and 3x3 max-pool (``imagenet``), or a 3x3 stride-1 convolution without
    pooling for small images (``small``, the CIFAR variant of He et al.)."""

    def __init__(self, image_shape: ImageShape, width: int, stem: str, norm: str) -> None:
        super().__init__()
        self.unflatten = nn.Unflatten(1, image_shape)
        small = stem == "small"
        self.conv1 = conv3x3(image_shape[0], width) if small else nn.Conv2d(image_shape[0], width, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(norm, width)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(self.unflatten(x)))))


@functools.lru_cache(maxsize=2)
def _read_weights(path: str) -> Mapping[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same config error
        raise ConfigError("model.encoder.weights", f"cannot read {path}: {err}") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError("model.encoder.weights", f"{path} is not a state dict")
    return loaded


def torchvision_key(key: str) -> str | None:
    """A torchvision ResNet state-dict key -> this encoder's block key (None: not part of the encoder)."""
    if key.startswith(("fc.", "avgpool.")) or key.rsplit(".", 1)[-1] in RUNNING_STATISTICS:
        return None
    if key.startswith(("conv1.", "bn1.")):
        return "0." + key
    if key.startswith("layer") and key[5:6].isdigit():
        return key[5:]
    return None


@dataclass(frozen=True)
class ResNetEncoder(Encoder):
    """A ResNet-18, -34 or -50 (``depth``) over the suite's images; ``width`` the stem's channels (64 as in
    torchvision; the last feature map has ``8 * width`` channels, ``32 * width`` at depth 50).
    ``weights``: a local torchvision checkpoint of the same depth and width (``torch.save`` of its
    ``state_dict()``) to start from; its ``fc`` and BatchNorm running statistics are not used. Never
    downloaded. ``model.representation_dim`` does not apply: heads sit on the feature map."""

    name: ClassVar[str] = "resnet"
    needs_image: ClassVar[bool] = True
    depth: Literal[18, 34, 50] = 18
    width: int = 64
    stem: Literal["imagenet", "small"] = "imagenet"  # small: 3x3 stride-1 convolution, no max-pool
    norm: Literal["group", "batch"] = "group"
    weights: str | None = None

    def __post_init__(self) -> None:
        require(self.depth in LAYERS, "depth", f"must be one of {sorted(LAYERS)}, got {self.depth}")
        require(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        if self.weights is not None:
            require(Path(self.weights).is_file(), "weights", f"no such file: {self.weights}")

    def build(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> nn.ModuleList:
        if image_shape is None:
            raise ValueError("a resnet encoder needs the image shape")
        kind, counts = LAYERS[self.depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        blocks: list[nn.Module] = [Stem(image_shape, self.width, self.stem, self.norm)]
        fan_in = self.width
        for i, count in enumerate(counts):
            planes, stride = self.width * 2**i, 1 if i == 0 else 2
            layer = []
            for j in range(count):
                layer.append(block(fan_in, planes, stride if j == 0 else 1, self.norm))
                fan_in = planes * block.expansion
            blocks.append(nn.Sequential(*layer))
        encoder = nn.ModuleList(blocks)
        for module in encoder.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if self.weights is not None:
            encoder.load_state_dict(self._checkpoint(encoder.state_dict()))
        return encoder

    def num_blocks(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> int:
        return 1 + len(LAYERS[self.depth][1])

    def output_shape(
        self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None
    ) -> tuple[int, ...] | None:
        """``layer4``'s map: every stride-2 step (the 7x7 stem and its max-pool, then layer2-4's first
        convolution) takes a side ``s`` to ``(s - 1) // 2 + 1``."""
        if image_shape is None:
            return None
        halvings = 3 + (0 if self.stem == "small" else 2)
        height, width = image_shape[1:]
        for _ in range(halvings):
            height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        expansion = 1 if LAYERS[self.depth][0] == "basic" else 4
        return (self.width * 8 * expansion, height, width)

    def _checkpoint(self, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The checkpoint's encoder part under this encoder's keys, checked key by key and shape by shape."""
        assert self.weights is not None
        state = {}
        for key, value in _read_weights(self.weights).items():
            mine = torchvision_key(key)
            if mine is not None:
                state[mine] = value
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ConfigError(
                "model.encoder.weights", f"{self.weights} lacks {len(missing)} encoder parameters, e.g. {missing[:3]}"
            )
        for key, value in expected.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise ConfigError(
                    "model.encoder.weights",
                    f"{self.weights}: {key} has shape {tuple(state[key].shape)}, the encoder {tuple(value.shape)} "
                    f"(depth {self.depth}, width {self.width}, stem {self.stem})",
                )
        return {k: state[k].to(expected[k].dtype) for k in expected}


Encoder.REGISTRY.register(ResNetEncoder)
