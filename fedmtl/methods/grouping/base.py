"""Groups of clients that each keep their own encoder (config ``server.grouping``).

The server starts from :meth:`Grouping.initial` groups and, after every round, shows each group's
aggregated updates to the rule's :class:`Regrouper`, which may split the group. A rule sees only the
``K x K`` Gramian of the group's updates (their norms and cosines) and, where clients report it, the
round's task affinity: never the updates themselves, never data or heads. Pure tensor code; the
server's glue is ``fedmtl/federation/grouping.py``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fedmtl.core.errors import require
from fedmtl.core.registry import Component, Registry

Group = tuple[int, ...]  # client ids, ascending


@dataclass(frozen=True)
class GroupRound:
    """One group's aggregated round, as a grouping rule sees it."""

    members: Group  # every client of the group
    clients: tuple[int, ...]  # the clients whose updates were aggregated this round (the Gramian's rows)
    gramian: torch.Tensor  # [K, K] Gramian of their updates, float64
    min_size: int  # the smallest group the server can aggregate (its aggregator and sampling)
    groups: int = 1  # how many groups the federation has now
    tasks: Mapping[int, tuple[str, ...]] = field(default_factory=dict)  # client id -> its tasks
    # the round's lookahead task affinity Z(i -> j), mean over the group's replies (client.affinity_every)
    task_affinity: Mapping[tuple[str, str], float] = field(default_factory=dict)
    updates: torch.Tensor | None = None  # [K, P] the rows themselves, when the rule asks (wants_updates)
    # client affinity Z(i -> j) by client id, reported this round (server.client_affinity_every)
    client_affinity: Mapping[tuple[int, int], float] = field(default_factory=dict)


class Regrouper:
    """A grouping rule's state over a run; checkpointed with the server."""

    def wants_updates(self, server_round: int) -> bool:
        """Whether this round's :class:`GroupRound` must carry the update rows (they cost a copy)."""
        return False

    def observe(self, server_round: int, group: GroupRound) -> list[Group] | None:
        """The group's split after this round (two or more groups covering its members), or None to keep it."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (stateless rules have nothing to restore)."""


class Grouping(Component):
    """A rule that groups the clients; ``splits``: groups may change during the run."""

    REGISTRY: ClassVar[Registry] = Registry("grouping rule", ("fedmtl.methods.grouping",))
    splits: ClassVar[bool] = True
    groups_clients: ClassVar[bool] = True  # False: server.cohorts decides who shares an encoder

    def initial(self, clients: Sequence[int]) -> list[Group]:
        """The groups at the first round: every client together."""
        return [tuple(sorted(clients))]

    @abstractmethod
    def start(self) -> Regrouper:
        """A fresh state for one run."""

    def check(self, clients: Sequence[int], fraction_fit: float) -> tuple[str, str] | None:
        """``(key under server.grouping, why)`` when this rule cannot group these clients, or None."""
        return None

    def check_settings(self, setting: Callable[[str], Any]) -> tuple[str, str] | None:
        """``(key under server.grouping, why)`` when the rest of the config does not give this rule what it
        needs; ``setting("client.affinity_every")`` reads any config value by its key path."""
        return None


@dataclass(frozen=True)
class NoGrouping(Grouping):
    """One group: every client shares the encoder (or ``server.cohorts`` decides)."""

    name: ClassVar[str] = "none"
    splits: ClassVar[bool] = False
    groups_clients: ClassVar[bool] = False

    def start(self) -> Regrouper:
        return Regrouper()


@dataclass(frozen=True)
class GivenGroups(Grouping):
    """Groups named in the config, fixed for the run (a control: the true split, or a wrong one)."""

    name: ClassVar[str] = "given"
    splits: ClassVar[bool] = False
    groups: tuple[tuple[int, ...], ...] = ()  # client ids per group; every client in exactly one

    def __post_init__(self) -> None:
        require(len(self.groups) >= 1, "groups", "must name at least one group of client ids")
        for i, group in enumerate(self.groups):
            require(len(group) >= 1, f"groups[{i}]", "is empty")

    def initial(self, clients: Sequence[int]) -> list[Group]:
        return [tuple(sorted(g)) for g in self.groups]

    def start(self) -> Regrouper:
        return Regrouper()

    def check(self, clients: Sequence[int], fraction_fit: float) -> tuple[str, str] | None:
        seen: dict[int, int] = {}
        for i, group in enumerate(self.groups):
            for client in group:
                if client not in clients:
                    return f"groups[{i}]", f"names client {client}, which does not take part (clients: {list(clients)})"
                if client in seen:
                    return f"groups[{i}]", f"names client {client}, already in groups[{seen[client]}]"
                seen[client] = i
        missing = [c for c in clients if c not in seen]
        if missing:
            return "groups", f"leaves clients {missing} in no group"
        return None
