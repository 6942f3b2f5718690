"""Shared encoders by name (``model.encoder``): each builds a list of blocks, block ``i``'s parameters
being ``encoder.<i>.*`` (the unit of partial sharing and of per-task adapters). ``module`` is the
user's own ``nn.Module``, named by import path, that declares its blocks."""

from __future__ import annotations

import importlib
import inspect
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import nn

from fedmtl.core.errors import ConfigError, FieldError, require
from fedmtl.core.registry import Component, Registry


class ModelConfig(Protocol):
    """What an encoder reads of ``model`` (:class:`fedmtl.model.config.ModelConfig` has it all)."""

    @property
    def encoder_hidden(self) -> tuple[int, ...]: ...

    @property
    def representation_dim(self) -> int: ...

    @property
    def activation(self) -> str: ...

    @property
    def conv_channels(self) -> tuple[int, ...]: ...


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
ImageShape = tuple[int, int, int]


def mlp(widths: list[int], activation: str, final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Encoder(Component):
    """An encoder architecture. Capabilities: ``needs_image`` (the suite must give an image shape),
    ``supports_adapters`` (per-task residual adapters after every block)."""

    REGISTRY: ClassVar[Registry] = Registry("encoder", (__name__, "fedmtl.model.resnet", "fedmtl.model.huggingface"))
    needs_image: ClassVar[bool] = False
    supports_adapters: ClassVar[bool] = False

    @abstractmethod
    def build(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> nn.ModuleList:
        """The blocks, in order."""

    def num_blocks(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> int:
        """How many blocks :meth:`build` makes (``model.sharing`` checks partial sharing against it)."""
        return len(self.build(model, input_dim, image_shape))

    def block_widths(self, model: ModelConfig, input_dim: int) -> list[int]:
        """The output width of each block (where adapters go)."""
        raise NotImplementedError(f"the {self.name} encoder has no adapters")

    def output_shape(
        self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None
    ) -> tuple[int, ...] | None:
        """One example's output shape when the architecture fixes it (the heads are built from it); None:
        found by running the built encoder (a user's module, a transformer)."""
        return None


@dataclass(frozen=True)
class MLPEncoder(Encoder):
    """One ``Linear -> activation`` block per ``model.encoder_hidden`` width, then one to ``representation_dim``."""

    name: ClassVar[str] = "mlp"
    supports_adapters: ClassVar[bool] = True

    def build(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> nn.ModuleList:
        widths = [input_dim, *self.block_widths(model, input_dim)]
        return nn.ModuleList(mlp([a, b], model.activation, final_activation=True) for a, b in zip(widths, widths[1:]))

    def num_blocks(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> int:
        return len(model.encoder_hidden) + 1

    def output_shape(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> tuple[int, ...]:
        return (model.representation_dim,)

    def block_widths(self, model: ModelConfig, input_dim: int) -> list[int]:
        return [*model.encoder_hidden, model.representation_dim]


@dataclass(frozen=True)
class CNNEncoder(Encoder):
    """One ``conv3x3 -> activation (-> maxpool2)`` block per ``model.conv_channels`` entry on the
    unflattened image, then ``Linear -> activation`` to ``representation_dim`` (image suites only)."""

    name: ClassVar[str] = "cnn"
    needs_image: ClassVar[bool] = True

    def build(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> nn.ModuleList:
        if image_shape is None:
            raise ValueError("a cnn encoder needs the image shape")
        channels, height, width = image_shape
        blocks: list[nn.Module] = []
        for i, out_channels in enumerate(model.conv_channels):
            layers: list[nn.Module] = [nn.Unflatten(1, image_shape)] if i == 0 else []
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), ACTIVATIONS[model.activation]()]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            blocks.append(nn.Sequential(*layers))
            channels = out_channels
        last = nn.Linear(channels * height * width, model.representation_dim)
        blocks.append(nn.Sequential(nn.Flatten(), last, ACTIVATIONS[model.activation]()))
        return nn.ModuleList(blocks)

    def num_blocks(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> int:
        return len(model.conv_channels) + 1

    def output_shape(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> tuple[int, ...]:
        return (model.representation_dim,)


def import_object(path: str) -> Any:
    """``package.module:Name`` -> the object; ImportError or AttributeError when it is not there."""
    module_name, _, attribute = path.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


@dataclass(frozen=True)
class ModuleEncoder(Encoder):
    """The user's own encoder: ``path: my_pkg.models:Encoder`` names a class (or any callable) called as
    ``Encoder(input_dim=..., representation_dim=..., image_shape=..., **kwargs)``; the module it returns
    must declare its blocks as ``blocks``, an ``nn.ModuleList`` applied in order to the flat input
    ``[batch, input_dim]`` (image suites: reshape in the first block to ``image_shape``, ``(C, H, W)``),
    the last giving ``[batch, representation_dim]`` or, for per-pixel tasks, a feature map ``[batch, C, h, w]``. Blocks are the unit of partial sharing
    (``model.sharing: partial``) and of ``server.shared_across_groups``; the module's other attributes
    are not used. Its weights start as the module initialises them (load a local file in ``__init__``
    to start from pretrained weights; fedmtl never downloads). The module must be importable wherever
    clients run (Ray workers and SuperNodes: on ``PYTHONPATH``)."""

    name: ClassVar[str] = "module"
    path: str = ""  # package.module:Name
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # passed to it besides the three above

    def __post_init__(self) -> None:
        module_name, colon, attribute = self.path.partition(":")
        require(bool(module_name and colon and attribute), "path", f"must be 'package.module:Name', got {self.path!r}")
        try:
            found = import_object(self.path)
        except (ImportError, AttributeError) as err:
            raise FieldError("path", f"cannot import {self.path!r}: {err}") from None
        require(callable(found), "path", f"{self.path!r} is not a class or function")

    def build(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> nn.ModuleList:
        factory = import_object(self.path)
        arguments = {
            "input_dim": input_dim,
            "representation_dim": model.representation_dim,
            "image_shape": image_shape,
            **self.kwargs,
        }
        try:
            inspect.signature(factory).bind(**arguments)
        except TypeError as err:  # an argument it does not take, or one it needs that is not given
            raise ConfigError("model.encoder.kwargs", f"{self.path} refuses these arguments: {err}") from None
        except ValueError:  # no signature to read (a builtin): let the call decide
            pass
        try:
            built = factory(**arguments)
        except Exception as err:  # noqa: BLE001 - the user's code: any failure is this config's error
            raise ConfigError(
                "model.encoder.path", f"{self.path} failed to build: {type(err).__name__}: {err}"
            ) from None
        blocks = getattr(built, "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ConfigError(
                "model.encoder.path",
                f"{self.path} declares no blocks: its module needs `blocks`, a non-empty nn.ModuleList applied in order",
            )
        return blocks


ENCODERS = Encoder.REGISTRY
for _encoder in (MLPEncoder, CNNEncoder, ModuleEncoder):
    ENCODERS.register(_encoder)
