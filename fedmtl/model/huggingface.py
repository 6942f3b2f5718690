"""Hugging Face transformer encoders over token ids (BERT, RoBERTa, DistilBERT and their kin), loaded
only from a local directory or built from a config: nothing is downloaded.

Blocks: ``0`` the embeddings, ``1``-``n`` the transformer layers, ``n + 1`` the pooling (no parameters),
so partial sharing by block works as for the other encoders. The input is ``[batch, length]`` token ids
(the suites keep them as numbers); the padding id comes from the model's config and masks attention and
the mean pooling. Between blocks the attention mask travels as one extra channel of the hidden states
(the blocks are applied in order to one tensor).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from fedmtl.core.errors import ConfigError, FieldError, require
from fedmtl.model.encoders import Encoder, ImageShape, ModelConfig

INSTALL_HINT = "needs transformers (pip install -e '.[text]')"


class Embed(nn.Module):
    """Token ids -> ``[batch, length, hidden + 1]``: the embeddings, then the mask (1 = a real token)."""

    def __init__(self, embeddings: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.embeddings, self.pad_id = embeddings, pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        hidden = self.embeddings(input_ids=ids)
        return torch.cat([hidden, (ids != self.pad_id).to(hidden.dtype)[..., None]], dim=-1)


class Layer(nn.Module):
    """One transformer layer under the additive attention mask read from the last channel."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, mask = x[..., :-1], x[..., -1]
        additive = (1.0 - mask)[:, None, None, :] * torch.finfo(hidden.dtype).min
        out = self.layer(hidden, attention_mask=additive)
        out = out[0] if isinstance(out, tuple) else out
        return torch.cat([out, mask[..., None]], dim=-1)


class Pool(nn.Module):
    """``[batch, hidden]``: the mean over real tokens (``mean``) or the first token's state (``cls``)."""

    def __init__(self, pooling: str) -> None:
        super().__init__()
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, mask = x[..., :-1], x[..., -1:]
        if self.pooling == "cls":
            return hidden[:, 0]
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@functools.lru_cache(maxsize=2)
def pretrained(path: str) -> Any:
    """The model saved in ``path`` (local files only), loaded once per process: encoders are built every round."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer layers (BERT / RoBERTa: ``encoder.layer``; DistilBERT: ``transformer.layer``)."""
    for owner in ("encoder", "transformer"):
        layers = getattr(getattr(model, owner, None), "layer", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ConfigError(
        "model.encoder", f"{type(model).__name__} has no encoder.layer or transformer.layer: not a BERT-style encoder"
    )


@dataclass(frozen=True)
class HuggingFaceEncoder(Encoder):
    """A Hugging Face encoder: ``path``, a local ``save_pretrained`` directory (its weights are the start),
    or ``config``, a model config to build from scratch (``{model_type: bert, hidden_size: 64, ...}``).
    ``pooling``: ``mean`` over real tokens or ``cls``. ``model.representation_dim`` does not apply: the
    representation is the model's hidden size."""

    name: ClassVar[str] = "huggingface"
    path: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    pooling: Literal["mean", "cls"] = "mean"

    def __post_init__(self) -> None:
        if importlib.util.find_spec("transformers") is None:
            raise FieldError("name", INSTALL_HINT)
        require(
            (self.path is None) != (not self.config), "path", "give exactly one of path (a local directory) and config"
        )
        if self.path is not None:
            require(
                (Path(self.path) / "config.json").is_file(),
                "path",
                f"no config.json in {self.path}: save_pretrained a model there",
            )
        else:
            require("model_type" in self.config, "config", "needs model_type (e.g. bert)")

    def build(self, model: ModelConfig, input_dim: int, image_shape: ImageShape | None) -> nn.ModuleList:
        from transformers import AutoConfig, AutoModel

        try:
            if self.path is not None:  # read once per process; every build gets its own copy
                network = copy.deepcopy(pretrained(self.path))
            else:
                settings = dict(self.config)
                config = AutoConfig.for_model(settings.pop("model_type"), **settings)
                config._attn_implementation = "eager"  # the additive mask of Layer; sdpa may take another form
                network = AutoModel.from_config(config)
        except (OSError, ValueError, KeyError, TypeError) as err:
            where = "model.encoder.path" if self.path is not None else "model.encoder.config"
            raise ConfigError(where, f"cannot build the model: {type(err).__name__}: {err}") from None
        pad_id = network.config.pad_token_id
        blocks: list[nn.Module] = [Embed(network.embeddings, 0 if pad_id is None else int(pad_id))]
        blocks += [Layer(layer) for layer in transformer_layers(network)]
        blocks.append(Pool(self.pooling))
        return nn.ModuleList(blocks)


Encoder.REGISTRY.register(HuggingFaceEncoder)
