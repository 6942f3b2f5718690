"""One round of a group as a grouping rule sees it, built from update rows (shared by the grouping tests)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fedmtl.methods.grouping import GroupRound


def round_of(
    rows: torch.Tensor,
    clients: Iterable[int] | None = None,
    members: Iterable[int] | None = None,
    min_size: int = 1,
    groups: int = 1,
) -> GroupRound:
    """Row i is client ``clients[i]``'s update (clients 0..K-1 by default); ``members``: the group's
    members (the clients by default, so every member trained)."""
    clients = tuple(range(len(rows))) if clients is None else tuple(clients)
    return GroupRound(
        members=tuple(members if members is not None else clients),
        clients=clients,
        gramian=rows @ rows.T,
        min_size=min_size,
        groups=groups,
        updates=rows,
    )
