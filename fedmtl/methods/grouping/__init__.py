"""Grouping rules (config ``server.grouping``): which clients share an encoder, decided during the run."""

from __future__ import annotations

from fedmtl.methods.grouping.affinity import AffinityGrouping
from fedmtl.methods.grouping.base import GivenGroups, Group, Grouping, GroupRound, NoGrouping, Regrouper
from fedmtl.methods.grouping.cfl import ClusteredFL

GROUPINGS = Grouping.REGISTRY
for _rule in (NoGrouping, GivenGroups, ClusteredFL, AffinityGrouping):
    GROUPINGS.register(_rule)

__all__ = [
    "GROUPINGS",
    "AffinityGrouping",
    "ClusteredFL",
    "GivenGroups",
    "Group",
    "GroupRound",
    "Grouping",
    "NoGrouping",
    "Regrouper",
]
