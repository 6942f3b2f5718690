"""The model's configuration (config ``model``): encoder, heads, what is shared, how heads start."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedmtl.core.errors import require
from fedmtl.methods.sharing import Hard, Sharing
from fedmtl.model.encoders import Encoder, MLPEncoder
from fedmtl.model.head_init import HeadInit, PerClient


@dataclass(frozen=True)
class ModelConfig:
    encoder_hidden: tuple[int, ...] = (64,)  # hidden widths of the shared MLP encoder
    representation_dim: int = 16  # width of the encoder output fed to every head
    head_hidden: tuple[int, ...] = (16,)  # hidden widths of each private task head
    activation: Literal["relu", "tanh", "gelu"] = "relu"  # after every hidden layer of encoder, heads and adapters
    # mlp: one Linear block per encoder_hidden width; cnn: one 3x3 conv block (+ 2x2 max-pool)
    # per conv_channels entry, then a Linear block to representation_dim (image suites only);
    # {name: resnet, depth: 18, width: 64, stem: imagenet | small, norm: group | batch, weights: null}:
    # torchvision's ResNet layout, its layer4 feature map the output (image suites; docs/METHODS.md);
    # {name: module, path: my_pkg.models:Encoder, kwargs: {...}}: your own nn.Module with its blocks.
    encoder: Encoder = field(default_factory=MLPEncoder)
    conv_channels: tuple[int, ...] = (16, 32)  # cnn only: output channels of each conv block
    sharing: Sharing = field(default_factory=Hard)  # {name: hard | partial | adapters | soft}
    # How a private head starts: client = drawn from (seed, client), so clients holding one task start
    # from different heads; task = the round-0 head of the task, the same on every client that holds it
    # (as when one initial model is sent to everyone, and as fed_full's server starts).
    head_init: HeadInit = field(default_factory=PerClient)
    # A local file to start the encoder from instead of its random initialisation: a state dict of the
    # encoder, or a run's encoder.pt (one group's: {key: state}). Never downloaded; the shapes must match.
    init_from: str | None = None
    # Groups of classification tasks with one joint head (multi-label classification: one network outputs
    # every label set of an example, each task reading its slice, trained on the same batch of examples).
    # Needs a suite whose tasks share their examples; a client holding part of a group trains its slices.
    joint_heads: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.init_from is not None:
            require(Path(self.init_from).is_file(), "init_from", f"no such file: {self.init_from}")
        require(self.representation_dim >= 1, "representation_dim", f"must be >= 1, got {self.representation_dim}")
        for i, group in enumerate(self.joint_heads):
            require(
                len(set(group)) == len(group) >= 2,
                f"joint_heads[{i}]",
                f"must name two tasks or more, got {list(group)}",
            )
        grouped = [task for group in self.joint_heads for task in group]
        require(len(set(grouped)) == len(grouped), "joint_heads", "a task may sit in one joint head only")
        for key in ("encoder_hidden", "head_hidden", "conv_channels"):
            widths = getattr(self, key)
            require(all(w >= 1 for w in widths), key, f"layer widths must be >= 1, got {list(widths)}")

    def num_encoder_blocks(self, input_dim: int, image_shape: tuple[int, int, int] | None) -> int:
        return self.encoder.num_blocks(self, input_dim, image_shape)
