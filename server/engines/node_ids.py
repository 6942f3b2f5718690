"""Node ids for the nodes a placed grid simulates, computed from their partitions instead of stored.

A placed grid gives each of its N partitions a node id that looks random (as a SuperLink's do: random
per run, never 0 or 1). Drawing them and keeping ``node -> partition`` (and the engine's
``partition -> node``) in dicts took about 150 MB each and 0.4 s at a million nodes. :class:`PlacedNodes`
computes both directions: the node id of partition ``p`` is ``2^62 + f(p)`` for a keyed bijection ``f`` of
the 62-bit integers (two rounds of multiply and xorshift, as in splitmix64), with a key drawn per grid;
``f``'s inverse gives the partition back and tells a node id that is not one of the N.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

BITS = 62
MASK = (1 << BITS) - 1
HIGH = 1 << BITS  # every node id has this bit: never 0 or 1 (the SuperLink's), always below 2^63
MULTIPLIERS = (0x3F58476D1CE4E5B9 & MASK | 1, 0x14D049BB133111EB & MASK | 1)  # odd: invertible mod 2^62
INVERSES = tuple(pow(m, -1, 1 << BITS) for m in MULTIPLIERS)
SHIFTS = (30, 27)


def _unshift(value: int, shift: int) -> int:
    """The inverse of ``x ^ (x >> shift)`` on 62 bits."""
    result = value
    for _ in range(BITS // shift + 1):
        result = value ^ (result >> shift)
    return result


class PlacedNodes(Mapping[int, int]):
    """node id -> partition for partitions ``0 .. count - 1``; :meth:`node` the other way."""

    def __init__(self, count: int, key: int) -> None:
        self.count = count
        self._mix = (key & MASK, (key >> BITS) & MASK)  # the two xor keys

    def node(self, partition: int) -> int:
        if not 0 <= partition < self.count:
            raise KeyError(partition)
        x = partition ^ self._mix[0]
        for multiplier, shift in zip(MULTIPLIERS, SHIFTS):
            x = (x * multiplier) & MASK
            x ^= x >> shift
        return HIGH | (x ^ self._mix[1])

    def partition(self, node: int) -> int | None:
        """The partition node ``node`` plays, or None when it is none of these nodes."""
        if not isinstance(node, int) or node >> BITS != 1:
            return None
        x = (node & MASK) ^ self._mix[1]
        for inverse, shift in zip(reversed(INVERSES), reversed(SHIFTS)):
            x = (_unshift(x, shift) * inverse) & MASK
        partition = x ^ self._mix[0]
        return partition if partition < self.count else None

    def __getitem__(self, node: int) -> int:
        partition = self.partition(node)
        if partition is None:
            raise KeyError(node)
        return partition

    def __contains__(self, node: object) -> bool:
        return isinstance(node, int) and self.partition(node) is not None

    def __iter__(self) -> Iterator[int]:
        return (self.node(p) for p in range(self.count))

    def __len__(self) -> int:
        return self.count


class PartitionNodes(Mapping[int, int]):
    """partition -> node id of a :class:`PlacedNodes` (what the engine sends each participant's messages to)."""

    def __init__(self, nodes: PlacedNodes) -> None:
        self.nodes = nodes

    def __getitem__(self, partition: int) -> int:
        return self.nodes.node(partition)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.nodes.count))

    def __len__(self) -> int:
        return self.nodes.count
