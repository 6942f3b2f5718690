"""Parameter names: the contract between the model, the wire format and the server.

``encoder.<block>.*`` may be shared (``model.sharing`` decides which blocks), ``heads.<task>.*`` and
``adapters.<task>.*`` stay on the client unless heads are federated (``server.federate_heads``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

ENCODER_PREFIX = "encoder."
HEADS_PREFIX = "heads."
ADAPTERS_PREFIX = "adapters."

V = TypeVar("V")


def block_index(key: str) -> int | None:
    """``encoder.<i>.…`` -> i; None for non-encoder keys."""
    if not key.startswith(ENCODER_PREFIX):
        return None
    return int(key.split(".")[1])


def is_head(key: str) -> bool:
    return key.startswith(HEADS_PREFIX)


def task_of(key: str) -> str:
    """``heads.<task>.…`` -> task."""
    return key.split(".")[1]


def parameter_of(key: str) -> str:
    """``heads.<task>.<parameter>`` -> ``<parameter>``."""
    return key.split(".", 2)[2]


def split_heads(state: Mapping[str, V]) -> tuple[dict[str, V], dict[str, V]]:
    """(everything else, the head parameters)."""
    return {k: v for k, v in state.items() if not is_head(k)}, {k: v for k, v in state.items() if is_head(k)}
