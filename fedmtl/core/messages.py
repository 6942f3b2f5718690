"""What travels between the server's algorithm and the participants, without Flower: the envelopes the
round driver hands an engine (:class:`Send`) and gets back (:class:`Reply`). Engines turn them into
their own messages (Flower ``Message`` objects for every engine fedmtl ships)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Kind = Literal["train", "evaluate"]
TRAIN: Kind = "train"
EVALUATE: Kind = "evaluate"
Config = Mapping[str, int | float | str | bool]


@dataclass(frozen=True)
class Send:
    """One instruction to one participant: its encoder (and federated heads) and the round's settings."""

    participant: int
    kind: Kind
    arrays: Mapping[str, torch.Tensor]
    config: Config


@dataclass(frozen=True)
class Reply:
    """What came back from a participant: its arrays (training) and one metric report per client it
    speaks for, or the reason it failed. ``participant`` is the engine's word (the node it asked);
    ``reports`` carry the participant's own (``protocol.PARTICIPANT``)."""

    participant: int | None  # None when the engine cannot tell which participant a node plays
    arrays: dict[str, torch.Tensor] | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the participant failed (counted as a failure)
    problem: str | None = None  # the reply arrived but its envelope is unusable (counted as a rejection)
    payload_bytes: int = 0  # bytes of parameter arrays in the reply


@dataclass(frozen=True)
class SecureMean:
    """What secure aggregation gives the server of a training round: the weighted mean of the participants'
    encoder updates (``received - trained``; the weights are their example counts, or 1 each), and the
    protocol's own figures (contributors, values clipped, seconds)."""

    update: dict[str, torch.Tensor]
    info: Mapping[str, Any]


@dataclass(frozen=True)
class Exchange:
    """One exchange's replies (in no particular order) and the bytes of parameter arrays sent. Under
    secure aggregation a training exchange's replies carry reports only, and ``secure`` the mean update."""

    replies: list[Reply]
    payload_bytes: int = 0
    secure: SecureMean | None = None
