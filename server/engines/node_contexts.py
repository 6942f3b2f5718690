"""The simulated nodes' Flower ``Context`` objects, made when a node first gets a message.

A placed grid knows every node from the start (a million, at scale), but a round reaches only the few
it samples; making every ``Context`` (with its ``RecordDict``) up front took 4-6 s and about 680 MB at
a million nodes on the 2-core machine. Here a node is a key from the start and its context exists
once it is read (or stored, when a node's messages come back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from types import MappingProxyType

from flwr.app import Context
from flwr.common.constant import PARTITION_ID_KEY


class NodeContexts(MutableMapping[int, Context]):
    """node id -> its ``Context``; ``partitions``: node id -> the partition it plays (every node);
    ``make(node, partition)``: a fresh context for a node not read before."""

    def __init__(self, partitions: dict[int, int], make: Callable[[int, int], Context]) -> None:
        self._partitions = partitions
        self._make = make
        self._made: dict[int, Context] = {}

    def __getitem__(self, node: int) -> Context:
        context = self._made.get(node)
        if context is None:
            context = self._made[node] = self._make(node, self._partitions[node])  # KeyError: not a node
        return context

    def __setitem__(self, node: int, context: Context) -> None:
        self._made[node] = context
        self._partitions[node] = int(context.node_config.get(PARTITION_ID_KEY, -1))

    def __delitem__(self, node: int) -> None:
        del self._partitions[node]
        self._made.pop(node, None)

    def __contains__(self, node: object) -> bool:
        return node in self._partitions

    def __iter__(self) -> Iterator[int]:
        return iter(self._partitions)

    def __len__(self) -> int:
        return len(self._partitions)

    def partitions(self) -> Mapping[int, int]:
        """node id -> the partition it plays, without making a context (a read-only view, not a copy)."""
        return MappingProxyType(self._partitions)

    def made(self) -> int:
        """How many contexts exist (the nodes that got a message, or were given one)."""
        return len(self._made)
