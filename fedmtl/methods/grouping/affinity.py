"""Affinity grouping: clients clustered once, after warm-up rounds, on how well their training
agrees, into as many groups as the data support.

Three signals:

* ``updates`` (default): the cosine between the clients' encoder updates summed over the warm-up
  rounds. A single round's update is dominated by minibatch noise (measured on the setting of
  configs/study_adaptive.yaml: same-task cosines of 0.1-0.5 per round, cross-task about 0); the
  sum keeps what is systematic in a client's direction and averages the noise down (MaT-FL groups
  clients with different tasks by the similarity of their encoder updates: Cai et al., CVPR
  workshops 2023, github.com/VITA-Group/MaT-FL). The server keeps one summed update per client
  during the warm-up only (``N x P`` floats).
* ``cosines``: the pairwise cosine of the clients' updates in each round, averaged over the warm-up
  rounds in which both were aggregated (only the round's Gramian is needed).
* ``tasks``: the lookahead inter-task affinity that clients measure (TAG: Fifty et al., NeurIPS 2021;
  measured on the clients during federated training and averaged over clients and rounds, as MAS
  does: Zhuang et al., ICCV 2023). Two clients are as similar as their tasks' symmetric affinity
  ``(Z(i->j) + Z(j->i)) / 2``, normalised by ``sqrt(Z(i->i) Z(j->j))`` and clipped to [-1, 1] (a task
  is similar 1 to itself), averaged over their tasks' pairs. Needs ``client.affinity_every > 0``.
* ``clients``: the lookahead affinity between clients (``server.client_affinity_every``): how much
  client ``a``'s round update lowers client ``b``'s losses on ``b``'s data, averaged over the warm-up;
  two clients are as similar as ``(Z(a->b) + Z(b->a)) / 2`` normalised by ``sqrt(Z(a->a) Z(b->b))``
  and clipped to [-1, 1], as for tasks. Each client probes the updates of the previous round, so
  the warm-up must last past the first probed round; a client whose own progress ``Z(a->a)`` was
  never measured in the warm-up (not sampled in two consecutive rounds) leaves the group whole.

The clients are then cut by complete linkage on the distance ``1 - similarity`` into ``k`` groups for
every ``k`` from 2 to ``max_groups``; the ``k`` with the largest mean silhouette wins, and the
federation stays one group when no cut reaches ``min_silhouette`` (Rousseeuw's silhouette as the
rule for the number of clusters). Structure alone is not conflict: clients with little data update
differently from the rest even when their task agrees with it, so a cut is also refused when its two
closest groups still agree, their mean similarity above ``max_cross_similarity`` (the analogue of
clustered FL's separation test). A cut is allowed only when every group is at least the smallest
group the server can aggregate. Where fedmtl differs from MAS: MAS splits *tasks* into groups and
each client trains one model per group of its tasks; here *clients* are grouped (a client's encoder
serves all its tasks), which coincides with MAS when every client holds one task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from fedmtl.core.errors import require
from fedmtl.methods.grouping.base import Group, Grouping, GroupRound, Regrouper
from fedmtl.methods.grouping.clustering import complete_linkage, cosines_from_gramian, silhouette


def largest_cross_similarity(similarity: torch.Tensor, cut: Sequence[Group]) -> float:
    """The largest mean similarity between two groups of ``cut``: how much the closest groups still agree."""
    return max(float(similarity[list(a)][:, list(b)].mean()) for i, a in enumerate(cut) for b in cut[i + 1 :])


def best_cut(
    similarity: torch.Tensor, max_groups: int, min_silhouette: float, min_size: int, max_cross: float = 1.0
) -> tuple[list[Group], float | None]:
    """The complete-linkage cut of ``1 - similarity`` with the largest silhouette (indices into the
    matrix), and that silhouette; one group (and None) when no cut of groups of at least ``min_size``
    whose closest groups agree at most ``max_cross`` (mean similarity) reaches ``min_silhouette``."""
    n = similarity.shape[0]
    distance = (1 - similarity.double()).clamp_min(0).fill_diagonal_(0)
    best: tuple[list[Group], float | None] = ([tuple(range(n))], None)
    for k in range(2, min(max_groups, n - 1) + 1):  # the silhouette needs a group with two items
        cut = complete_linkage(distance, k)
        if min(len(c) for c in cut) < min_size or largest_cross_similarity(similarity, cut) > max_cross:
            continue
        score = silhouette(distance, cut)
        if score >= min_silhouette and (best[1] is None or score > best[1]):
            best = (cut, score)
    return best


def normalised_affinity(affinity: Mapping[tuple[Any, Any], float], a: Any, b: Any) -> float:
    """``(Z(a->b) + Z(b->a)) / 2 / sqrt(|Z(a->a)| |Z(b->b)|)`` clipped to [-1, 1]; 1 for ``a == b``, 0
    when either has made no progress on itself."""
    if a == b:
        return 1.0
    mutual = (affinity.get((a, b), 0.0) + affinity.get((b, a), 0.0)) / 2
    scale = math.sqrt(abs(affinity.get((a, a), 0.0)) * abs(affinity.get((b, b), 0.0)))
    return 0.0 if scale == 0 else max(-1.0, min(1.0, mutual / scale))


def task_similarity(
    tasks: Mapping[int, Sequence[str]], clients: Sequence[int], affinity: Mapping[tuple[str, str], float]
) -> torch.Tensor:
    """Client-by-client similarity from the task affinity (see the module's docstring)."""
    n = len(clients)
    matrix = torch.ones(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            pairs = [normalised_affinity(affinity, a, b) for a in tasks[clients[i]] for b in tasks[clients[j]]]
            matrix[i, j] = matrix[j, i] = sum(pairs) / len(pairs)
    return matrix


def client_similarity(clients: Sequence[int], affinity: Mapping[tuple[int, int], float]) -> torch.Tensor:
    """Client-by-client similarity from the client affinity (see the module's docstring)."""
    n = len(clients)
    matrix = torch.ones(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i, j] = matrix[j, i] = normalised_affinity(affinity, clients[i], clients[j])
    return matrix


@dataclass(frozen=True)
class AffinityGrouping(Grouping):
    """Clients clustered once, after ``warmup_rounds``, on update cosines or task affinity."""

    name: ClassVar[str] = "affinity"
    signal: Literal["updates", "cosines", "tasks", "clients"] = "updates"
    warmup_rounds: int = 5  # rounds whose signal is averaged; the groups form after the last of them
    max_groups: int | None = None  # groups at most (default: no limit but the clients)
    min_silhouette: float = 0.25  # below this for every cut, the federation stays one group
    # a cut whose two closest groups still agree more than this (mean similarity) is refused: groups
    # are for clients that do not help each other (0.2: chosen on tuning seeds, docs/FINDINGS.md)
    max_cross_similarity: float = 0.2

    def __post_init__(self) -> None:
        require(self.warmup_rounds >= 1, "warmup_rounds", f"must be >= 1, got {self.warmup_rounds}")
        groups = self.max_groups
        require(groups is None or groups >= 2, "max_groups", f"must be >= 2, got {groups}")
        score = self.min_silhouette
        require(-1 <= score <= 1, "min_silhouette", f"must be in [-1, 1], got {score}")
        cross = self.max_cross_similarity
        require(-1 <= cross <= 1, "max_cross_similarity", f"must be in [-1, 1], got {cross}")

    def start(self) -> Regrouper:
        return _AffinityState(self)

    def check(self, clients: Sequence[int], fraction_fit: float) -> tuple[str, str] | None:
        if self.max_groups is not None and self.max_groups > len(clients):
            return "max_groups", f"is {self.max_groups} but there are {len(clients)} clients"
        return None

    def check_settings(self, setting: Callable[[str], Any]) -> tuple[str, str] | None:
        needed = {"tasks": "client.affinity_every", "clients": "server.client_affinity_every"}.get(self.signal)
        if needed is None:
            return None
        every = setting(needed)
        if not every > 0:
            return "signal", f"is {self.signal!r}, which needs {needed} > 0"
        if self.signal == "clients" and self.warmup_rounds <= every:  # round r's updates are probed in round r + 1
            return (
                "warmup_rounds",
                f"is {self.warmup_rounds}, but client affinity is first measured in round {every + 1} "
                f"({needed}: {every}): the warm-up must last past it",
            )
        return None


class _AffinityState(Regrouper):
    """Sums of the signal per pair of clients (updates) or tasks (tasks) over the warm-up rounds."""

    def __init__(self, rule: AffinityGrouping) -> None:
        self.rule = rule
        self.sums: dict[tuple[Any, Any], float] = {}
        self.counts: dict[tuple[Any, Any], int] = {}
        self.updates: dict[int, torch.Tensor] = {}  # signal updates: each client's summed update

    def wants_updates(self, server_round: int) -> bool:
        return self.rule.signal == "updates" and server_round <= self.rule.warmup_rounds

    def _add(self, key: tuple[Any, Any], value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def _mean(self, key: tuple[Any, Any]) -> float:
        return self.sums[key] / self.counts[key] if key in self.counts else 0.0

    def observe(self, server_round: int, group: GroupRound) -> list[Group] | None:
        rule = self.rule
        if server_round > rule.warmup_rounds or group.groups > 1:
            return None
        if rule.signal == "updates":
            if group.updates is None:
                raise ValueError("affinity grouping on summed updates needs the round's update rows")
            for client, row in zip(group.clients, group.updates):
                total = self.updates.get(client)
                self.updates[client] = row.double().clone() if total is None else total + row.double()
        elif rule.signal == "cosines":
            cosines = cosines_from_gramian(group.gramian)
            for i, a in enumerate(group.clients):
                for j, b in enumerate(group.clients):
                    if a < b:
                        self._add((a, b), float(cosines[i, j]))
        else:
            measured = group.task_affinity if rule.signal == "tasks" else group.client_affinity
            for pair, value in measured.items():
                self._add(pair, value)
        if server_round < rule.warmup_rounds:
            return None
        members = list(group.members)
        if rule.signal == "updates":
            summed = (
                torch.stack([self.updates.get(c, torch.zeros(0)) for c in members]) if self._complete(members) else None
            )
            self.updates = {}  # needed no more: the warm-up ends with this round
            if summed is None:
                return None  # a client never trained in the warm-up: nothing to compare it by
            similarity = cosines_from_gramian(summed @ summed.T)
        elif rule.signal == "cosines":
            n = len(members)
            similarity = torch.ones(n, n, dtype=torch.float64)
            for i in range(n):
                for j in range(i + 1, n):
                    similarity[i, j] = similarity[j, i] = self._mean((members[i], members[j]))
        else:
            affinity = {pair: self._mean(pair) for pair in self.counts}
            if rule.signal == "tasks":
                similarity = task_similarity(group.tasks, members, affinity)
            elif all((c, c) in affinity for c in members):
                similarity = client_similarity(members, affinity)
            else:
                return None  # a client's own progress was never measured in the warm-up: nothing to compare it by
        most = len(members) if rule.max_groups is None else rule.max_groups
        cut, _ = best_cut(similarity, most, rule.min_silhouette, group.min_size, rule.max_cross_similarity)
        if len(cut) == 1:
            return None
        return [tuple(members[i] for i in c) for c in cut]

    def _complete(self, members: Sequence[int]) -> bool:
        return all(c in self.updates for c in members)

    def state_dict(self) -> dict[str, Any]:
        return {
            "pairs": [[list(k), self.sums[k], self.counts[k]] for k in sorted(self.counts)],
            "updates": {c: self.updates[c].clone() for c in sorted(self.updates)},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.updates = {int(c): t.clone() for c, t in state.get("updates", {}).items()}
        self.sums = {tuple(k): float(s) for k, s, _ in state["pairs"]}  # type: ignore[misc]
        self.counts = {tuple(k): int(c) for k, _, c in state["pairs"]}  # type: ignore[misc]
