"""The simulated nodes' Flower ``Context`` objects, made when a node first gets a message.

A placed grid knows every node from the start (a million, at scale), but a round reaches only the few
it samples; making every ``Context`` (with its ``RecordDict``) up front took 4-6 s and about 680 MB at
a million nodes on the 2-core machine. Here a node is a key from the start and its context exists
once it is read (or stored, when a node's messages come back).

With a memory budget (``simulation.engine.state_memory_mb``), the arrays in the states of the nodes
used longest ago are dropped once the private states held pass it: such a node's client finds no
private state in its context and reads it back from its state directory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping

from flwr.app import Context
from flwr.common.constant import PARTITION_ID_KEY


class NodeContexts(MutableMapping[int, Context]):
    """node id -> its ``Context``; ``partitions``: node id -> the partition it plays (every node placed at
    the start, e.g. a :class:`~server.engines.node_ids.PlacedNodes`, which stores nothing per node; nodes
    stored or removed later are kept beside it); ``make(node, partition)``: a fresh context for a node not
    read before; ``budget_bytes``: the most bytes of arrays the contexts' states may hold together (None:
    no limit)."""

    def __init__(
        self, partitions: Mapping[int, int], make: Callable[[int, int], Context], budget_bytes: int | None = None
    ) -> None:
        self._placed = partitions
        self._changed: dict[int, int | None] = {}  # node -> its partition since (None: removed)
        self._make = make
        self._made: dict[int, Context] = {}
        # node -> bytes of arrays its context's state holds, least recently used first
        self._held: OrderedDict[int, int] = OrderedDict()
        self.budget_bytes = budget_bytes
        self.held_bytes = 0
        self.dropped = 0  # states dropped to keep within the budget

    def __getitem__(self, node: int) -> Context:
        context = self._made.get(node)
        if context is None:
            context = self._made[node] = self._make(node, self.partition_of(node))
        elif node in self._held:
            self._held.move_to_end(node)
        return context

    def __setitem__(self, node: int, context: Context) -> None:
        """A node's context after its message ran (its state as the client left it)."""
        self._made[node] = context
        partition = int(context.node_config.get(PARTITION_ID_KEY, -1))
        if self._placed.get(node) != partition or node in self._changed:
            self._changed[node] = partition
        self.held_bytes -= self._held.pop(node, 0)
        held = state_bytes(context)
        if held:
            self._held[node] = held
            self.held_bytes += held
        if self.budget_bytes is not None:
            self._keep_within(self.budget_bytes, node)

    def _keep_within(self, budget: int, newest: int) -> None:
        """Drop the arrays of the states used longest ago (the node just stored keeps its own); the
        contexts stay, with whatever else their states hold (SecAgg+'s records between its stages)."""
        while self.held_bytes > budget and self._held:
            oldest = next(iter(self._held))
            if oldest == newest:
                break
            state = self._made[oldest].state
            for key in list(state.array_records):
                del state[key]
            self.held_bytes -= self._held.pop(oldest)
            self.dropped += 1

    def __delitem__(self, node: int) -> None:
        self.partition_of(node)  # KeyError: not a node
        self._changed[node] = None
        self._made.pop(node, None)
        self.held_bytes -= self._held.pop(node, 0)

    def partition_of(self, node: int) -> int:
        """The partition ``node`` plays; KeyError when it is not a node."""
        partition = self._changed[node] if node in self._changed else self._placed[node]
        if partition is None:
            raise KeyError(node)
        return partition

    def __contains__(self, node: object) -> bool:
        if node in self._changed:
            return self._changed[node] is not None  # type: ignore[index]
        return node in self._placed

    def __iter__(self) -> Iterator[int]:
        for node in self._placed:
            if self._changed.get(node, 0) is not None:
                yield node
        yield from (n for n, p in self._changed.items() if p is not None and n not in self._placed)

    def __len__(self) -> int:
        removed = sum(p is None for n, p in self._changed.items() if n in self._placed)
        added = sum(p is not None for n, p in self._changed.items() if n not in self._placed)
        return len(self._placed) - removed + added

    def partitions(self) -> Mapping[int, int]:
        """node id -> the partition it plays, without making a context (a read-only view, not a copy)."""
        return _Partitions(self)

    def unchanged(self) -> bool:
        """Whether the nodes are still exactly those placed at the start."""
        return not self._changed

    def made(self) -> int:
        """How many contexts exist (the nodes that got a message, or were given one)."""
        return len(self._made)


class _Partitions(Mapping[int, int]):
    """node id -> partition, read through a :class:`NodeContexts`."""

    def __init__(self, contexts: NodeContexts) -> None:
        self.contexts = contexts

    def __getitem__(self, node: int) -> int:
        return self.contexts.partition_of(node)

    def __iter__(self) -> Iterator[int]:
        return iter(self.contexts)

    def __len__(self) -> int:
        return len(self.contexts)


def state_bytes(context: Context) -> int:
    """Bytes of the arrays in a context's state (a client's private parameters, serialised)."""
    return sum(len(array.data) for record in context.state.array_records.values() for array in record.values())
