"""Clustered federated learning's split rule (Sattler, Müller, Samek, "Clustered Federated Learning:
Model-Agnostic Distributed Multitask Optimization Under Privacy Constraints", IEEE TNNLS 2020;
code: github.com/felisat/clustered-federated-learning).

A group splits in two when the federation has reached a stationary point of the group's joint
objective while its clients are still far from their own: the norm of the mean update is small
(``< eps_1``) and the largest client update is large (``> eps_2``), after a warm-up and with more
than two clients. The bipartition is complete-linkage clustering of the pairwise cosine similarity
of the updates forced to two clusters (the reference code's ``cluster_clients``); the paper accepts
it when the two sides are separated, the largest cosine across them below a bound
(its ``alpha_cross_max`` test). Splitting recurses on later rounds.

Where fedmtl differs: the reference notebook's ``eps_1 = 0.4``, ``eps_2 = 1.6`` are absolute norms
for its model and learning rate. Here the two tests are one scale-free ratio, ``|mean update| <=
max_mean_ratio * max_k |update_k|`` (the reference thresholds imply ``0.4 / 1.6 = 0.25``), so the rule
does not change with the learning rate, the number of local steps or the model's size. The split
also needs each side to be at least the smallest group the server can aggregate, and stops at
``max_groups``. The mean is unweighted, as in the reference code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.core.errors import require
from fedmtl.methods.grouping.base import Group, Grouping, GroupRound, Regrouper
from fedmtl.methods.grouping.clustering import complete_linkage, cosines_from_gramian


@dataclass(frozen=True)
class SplitEvidence:
    mean_norm: float  # |mean of the updates|
    max_norm: float  # largest update norm
    cross_cosine: float  # largest cosine between the two sides of the bipartition


def split_evidence(gram: torch.Tensor, sides: tuple[Group, Group]) -> SplitEvidence:
    """The numbers the split rule tests, from the updates' Gramian (rows indexed as in ``sides``)."""
    gram = gram.double()
    k = gram.shape[0]
    mean_norm = float(gram.sum().clamp_min(0).sqrt()) / k
    max_norm = float(gram.diagonal().clamp_min(0).sqrt().max())
    cosines = cosines_from_gramian(gram)
    cross = float(cosines[list(sides[0])][:, list(sides[1])].max())
    return SplitEvidence(mean_norm, max_norm, cross)


@dataclass(frozen=True)
class ClusteredFL(Grouping):
    """Recursive bipartition of a group whose mean update vanishes while its clients' do not."""

    name: ClassVar[str] = "cfl"
    warmup_rounds: int = 5  # no split before this many rounds
    max_mean_ratio: float = 0.25  # split when |mean update| <= this x the largest update norm (eps_1 / eps_2)
    max_cross_cosine: float = 0.0  # ... and the bipartition's sides have no cosine above this
    max_groups: int | None = None  # groups at most (default: no limit but the clients)

    def __post_init__(self) -> None:
        require(self.warmup_rounds >= 0, "warmup_rounds", f"must be >= 0, got {self.warmup_rounds}")
        ratio = self.max_mean_ratio
        require(0 < ratio < 1, "max_mean_ratio", f"must be in (0, 1), got {ratio}")
        cross = self.max_cross_cosine
        require(-1 <= cross <= 1, "max_cross_cosine", f"must be in [-1, 1], got {cross}")
        groups = self.max_groups
        require(groups is None or groups >= 1, "max_groups", f"must be >= 1, got {groups}")

    def start(self) -> Regrouper:
        return _CFLState(self)

    def check(self, clients: Sequence[int], fraction_fit: float) -> tuple[str, str] | None:
        if fraction_fit < 1:
            return "name", "cfl compares every client of a group in one round: needs server.fraction_fit: 1.0"
        if self.max_groups is not None and self.max_groups > len(clients):
            return "max_groups", f"is {self.max_groups} but there are {len(clients)} clients"
        return None


class _CFLState(Regrouper):
    """Stateless beyond the rule: every test reads the round's Gramian."""

    def __init__(self, rule: ClusteredFL) -> None:
        self.rule = rule

    def observe(self, server_round: int, group: GroupRound) -> list[Group] | None:
        rule = self.rule
        full = rule.max_groups is not None and group.groups >= rule.max_groups
        if server_round <= rule.warmup_rounds or full or len(group.clients) <= 2:
            return None
        if set(group.clients) != set(group.members):  # a client's update is missing this round
            return None
        sides = complete_linkage(-cosines_from_gramian(group.gramian), 2)
        if min(len(s) for s in sides) < group.min_size:
            return None
        evidence = split_evidence(group.gramian, (sides[0], sides[1]))
        if evidence.mean_norm > rule.max_mean_ratio * evidence.max_norm:
            return None
        if evidence.cross_cosine > rule.max_cross_cosine:
            return None
        return [tuple(sorted(group.clients[i] for i in side)) for side in sides]
