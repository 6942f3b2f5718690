"""How a private head starts (``model.head_init``), the first time a participant builds it."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.core.registry import Component, Registry

Heads = Mapping[str, torch.Tensor]


class HeadInit(Component):
    REGISTRY: ClassVar[Registry] = Registry("head initialisation", (__name__,))

    @abstractmethod
    def first_heads(self, keys: Sequence[str], round_zero_heads: Callable[[], Heads]) -> Heads:
        """Values for the head parameters ``keys`` that the participant has no state for yet; keys left
        out keep the model's own initialisation, drawn from (seed, client). ``round_zero_heads`` gives
        every task's round-0 heads (built only when asked)."""


@dataclass(frozen=True)
class PerClient(HeadInit):
    """Drawn from (seed, client): clients holding one task start from different heads."""

    name: ClassVar[str] = "client"

    def first_heads(self, keys: Sequence[str], round_zero_heads: Callable[[], Heads]) -> Heads:
        return {}


@dataclass(frozen=True)
class PerTask(HeadInit):
    """The round-0 head of the task, the same on every client that holds it (as when one initial model
    is sent to everyone, and as fed_full's server starts)."""

    name: ClassVar[str] = "task"

    def first_heads(self, keys: Sequence[str], round_zero_heads: Callable[[], Heads]) -> Heads:
        if not keys:
            return {}
        heads = round_zero_heads()
        return {key: heads[key] for key in keys}


HEAD_INITS = HeadInit.REGISTRY
for _init in (PerClient, PerTask):
    HEAD_INITS.register(_init)
