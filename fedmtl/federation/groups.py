"""The server's glue for ``server.grouping``: which cohort each client is in, and a cohort's split.

The rule (``fedmtl/methods/grouping/``) sees each group's round as a :class:`GroupRound`: the
Gramian of the aggregated updates, rebuilt from the round's diagnostics (row norms and cosines), and
the task affinity that the group's clients reported. A split gives every new group a copy of the
parent's encoder, server-optimizer state and personal encoders, and a sampler of its own seeded by
the run's seed and the group's key, so that a resumed run forms and samples the same groups.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedmtl.config.experiment import sample_size
from fedmtl.core import protocol
from fedmtl.core.params import block_index
from fedmtl.data.participants import Participant
from fedmtl.federation.cohort import Cohort
from fedmtl.federation.sampling import Sampler
from fedmtl.federation.server_update import FlatLayout, RoundDiagnostics
from fedmtl.methods.grouping import Group, GroupRound

ROOT = "all"  # the key of the one group every client starts in


def initial_keys(groups: Sequence[Group]) -> list[str]:
    """``all`` for one group, ``group-0``, ``group-1``, ... for several (named in the config)."""
    return [ROOT] if len(groups) == 1 else [f"group-{i}" for i in range(len(groups))]


def child_key(parent: str, index: int) -> str:
    return f"{parent}.{index}"


def sampler_for(seed: int, key: str, fraction_fit: float, fraction_evaluate: float) -> Sampler:
    """The run's seed for the first group (sampling as without grouping), the seed and key after that."""
    return Sampler(seed if key == ROOT else f"{seed}/{key}", fraction_fit, fraction_evaluate)


def smallest_group(min_rows: int, fraction_fit: float) -> int:
    """The fewest clients a group may have for its sample to feed the aggregator."""
    size = 1
    while sample_size(size, fraction_fit) < min_rows:
        size += 1
    return size


def gramian_of(diagnostics: RoundDiagnostics) -> torch.Tensor:
    """``G_ij = |u_i| |u_j| cos_ij`` from a round's diagnostics (row order: the diagnostics' clients)."""
    norms = torch.tensor(diagnostics.update_norms, dtype=torch.float64)
    k = len(norms)
    cosines = torch.eye(k, dtype=torch.float64)
    if k > 1:
        rows, cols = torch.triu_indices(k, k, offset=1).unbind()
        upper = torch.tensor(diagnostics.cosines_upper, dtype=torch.float64)
        cosines[rows, cols] = upper
        cosines[cols, rows] = upper
    return torch.outer(norms, norms) * cosines


def mean_task_affinity(reports: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    """Each ordered task pair's affinity, averaged over the reports that measured it."""
    sums: dict[tuple[str, str], list[float]] = {}
    for report in reports:
        for pair, value in protocol.unflatten_pair_metrics(report, protocol.TASK_AFFINITY).items():
            sums.setdefault(pair, []).append(value)
    return {pair: sum(values) / len(values) for pair, values in sorted(sums.items())}


def client_affinity(reports: Sequence[Mapping[str, Any]]) -> dict[tuple[int, int], float]:
    """``(from client, to client) -> Z`` from the round's replies (each reports its own column)."""
    pairs = {}
    for report in reports:
        for (source, target), value in protocol.unflatten_pair_metrics(report, protocol.CLIENT_AFFINITY).items():
            pairs[(int(source), int(target))] = value
    return dict(sorted(pairs.items()))


def group_round(
    cohort: Cohort,
    diagnostics: RoundDiagnostics,
    reports: Sequence[Mapping[str, Any]],
    min_size: int,
    groups: int,
    updates: torch.Tensor | None = None,
) -> GroupRound:
    return GroupRound(
        members=tuple(sorted(p.client_id for p in cohort.members)),
        clients=diagnostics.clients,
        gramian=gramian_of(diagnostics),
        min_size=min_size,
        groups=groups,
        tasks={p.client_id: p.tasks for p in cohort.members},
        task_affinity=mean_task_affinity(reports),
        updates=updates,
        client_affinity=client_affinity(reports),
    )


def split(cohort: Cohort, groups: Sequence[Group], samplers: Any) -> list[Cohort]:
    """``cohort`` as one cohort per group of client ids, each starting from a copy of its encoder
    and server state; ``samplers(key)`` gives each its sampler."""
    children = []
    for i, group in enumerate(groups):
        key = child_key(cohort.key, i)
        members = tuple(p for p in cohort.members if p.client_id in group)
        children.append(Cohort(key, members, samplers(key), copy.deepcopy(cohort.updater), adopts=cohort.adopts))
    return children


def membership(cohorts: Sequence[Cohort]) -> dict[str, list[int]]:
    """Cohort key -> its clients' ids (what ``server.jsonl`` and the checkpoint record)."""
    return {c.key: sorted(p.client_id for p in c.members) for c in cohorts}


def members_of(participants: Sequence[Participant], clients: Sequence[int]) -> tuple[Participant, ...]:
    wanted = set(clients)
    return tuple(p for p in participants if p.client_id in wanted)


def lower_blocks_mask(layout: FlatLayout, blocks: int) -> torch.Tensor:
    """The flat encoder's coordinates that belong to its lowest ``blocks`` blocks (bool, one per coordinate)."""
    parts = []
    for key, shape in zip(layout.keys, layout.shapes):
        index = block_index(key)
        parts.append(torch.full((shape.numel(),), index is not None and index < blocks, dtype=torch.bool))
    return torch.cat(parts)


def share_across(cohorts: Sequence[Cohort], mask: torch.Tensor, weights: Sequence[float]) -> None:
    """Set the ``mask`` coordinates of every cohort's encoder to their ``weights``-weighted mean
    (``server.shared_across_groups``). The cohorts held equal values there before the round, so this
    averages the groups' aggregated steps on those coordinates; a cohort with weight 0 (nothing
    aggregated this round) takes the mean. Each group's server-optimizer state stays its own."""
    total = float(sum(weights))
    if len(cohorts) < 2 or total <= 0:
        return
    with torch.no_grad():
        params = [c.updater.param for c in cohorts]
        index = mask.to(params[0].device)
        mean = sum(w / total * p[index] for w, p in zip(weights, params) if w > 0)
        for param in params:
            param[index] = mean
