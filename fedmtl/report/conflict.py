"""Conflict diagnostics of one arm summarised over rounds, then over seeds.

Per seed, each figure is a plain mean over every round (and client, or client pair) that
reported it; the seed values then give a mean ± std (:func:`fedmtl.report.deltas.mean_std`).

* ``task_cosine[(s, t)]``: cosine between the gradients of tasks ``s`` and ``t`` on the shared
  encoder inside the clients that hold both (the in-client conflict);
* ``client_cosine``: cosine between two clients' encoder updates, over all pairs that met at
  the server (the between-client conflict, Yu et al., NeurIPS 2020 / FedFV, IJCAI 2021);
* ``cross_task_cosine[(s, t)]``: the same cosine restricted to pairs in which one client holds
  ``s`` but not ``t`` and the other ``t`` but not ``s``: the between-client counterpart of the
  in-client task-gradient cosine, where the tasks meet only at the server (which tasks a client
  holds is read from its evaluation rows);
* ``conflict_fraction``: share of those client pairs with a negative cosine.

A sweep puts these beside the deltas so a reader sees whether the conflict follows the knob.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fedmtl.report.collect import RunResult, StudyData
from fedmtl.report.deltas import Spread, mean_std


@dataclass(frozen=True)
class ConflictSummary:
    arm: str
    task_cosine: dict[tuple[str, str], Spread]
    client_cosine: Spread | None
    conflict_fraction: Spread | None
    cross_task_cosine: dict[tuple[str, str], Spread]

    @property
    def empty(self) -> bool:
        return (
            not self.task_cosine
            and not self.cross_task_cosine
            and self.client_cosine is None
            and self.conflict_fraction is None
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "arm": self.arm,
            "task_cosine": {f"{s}|{t}": spread.to_dict() for (s, t), spread in self.task_cosine.items()},
            "client_cosine": None if self.client_cosine is None else self.client_cosine.to_dict(),
            "conflict_fraction": None if self.conflict_fraction is None else self.conflict_fraction.to_dict(),
            "cross_task_cosine": {f"{s}|{t}": spread.to_dict() for (s, t), spread in self.cross_task_cosine.items()},
        }


def _mean(values: Iterable[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def _over_seeds(per_seed: Iterable[float | None]) -> Spread | None:
    values = [v for v in per_seed if v is not None]
    return mean_std(values) if values else None


def task_cosine_per_seed(result: RunResult) -> dict[tuple[str, str], float]:
    """Task pair (sorted names) -> mean task-gradient cosine over rounds and clients of one run."""
    by_pair: dict[tuple[str, str], list[float]] = {}
    for row in result.task_cosines:
        if row.cosine is not None:
            first, second = sorted(row.tasks)
            by_pair.setdefault((first, second), []).append(float(row.cosine))
    return {pair: mean for pair, values in by_pair.items() if (mean := _mean(values)) is not None}


def client_cosine_per_seed(result: RunResult) -> float | None:
    """Mean off-diagonal client-update cosine over every round of one run."""
    values: list[float] = []
    for row in result.server:
        if row.cosines is not None and row.cosines.shape[0] > 1:
            upper = row.cosines[np.triu_indices(row.cosines.shape[0], k=1)]
            values.extend(float(v) for v in upper)
    return _mean(values)


def tasks_held(result: RunResult) -> dict[int, frozenset[str]]:
    """Client -> the tasks it was evaluated on in this run."""
    held: dict[int, set[str]] = {}
    for task, by_client in result.final_by_client.items():
        for client in by_client:
            held.setdefault(client, set()).add(task)
    return {client: frozenset(tasks) for client, tasks in held.items()}


def cross_task_cosine_per_seed(result: RunResult) -> dict[tuple[str, str], float]:
    """Task pair (sorted) -> mean client-update cosine over pairs where each client holds one task only."""
    held = tasks_held(result)
    by_pair: dict[tuple[str, str], list[float]] = {}
    for row in result.server:
        if row.cosines is None or len(row.clients) != row.cosines.shape[0]:  # no client ids: pairs unknown
            continue
        for i, j in zip(*np.triu_indices(row.cosines.shape[0], k=1)):
            first, second = held.get(row.clients[i], frozenset()), held.get(row.clients[j], frozenset())
            for s in first - second:
                for t in second - first:
                    by_pair.setdefault((min(s, t), max(s, t)), []).append(float(row.cosines[i, j]))
    return {pair: mean for pair, values in by_pair.items() if (mean := _mean(values)) is not None}


def _pairs_over_seeds(per_seed: list[dict[tuple[str, str], float]]) -> dict[tuple[str, str], Spread]:
    pairs = sorted({pair for seed in per_seed for pair in seed})
    return {pair: spread for pair in pairs if (spread := _over_seeds(s.get(pair) for s in per_seed)) is not None}


def conflict_fraction_per_seed(result: RunResult) -> float | None:
    return _mean(float(row.conflict_fraction) for row in result.server if row.conflict_fraction is not None)


def summarize_conflict(data: StudyData, arm: str) -> ConflictSummary:
    results = data.arm_results(arm)
    return ConflictSummary(
        arm=arm,
        task_cosine=_pairs_over_seeds([task_cosine_per_seed(result) for result in results]),
        client_cosine=_over_seeds(client_cosine_per_seed(result) for result in results),
        conflict_fraction=_over_seeds(conflict_fraction_per_seed(result) for result in results),
        cross_task_cosine=_pairs_over_seeds([cross_task_cosine_per_seed(result) for result in results]),
    )


COLUMNS_EXPLAINED = (
    "Per seed, the mean over rounds (and clients, or client pairs) of: the cosine between two tasks' gradients on "
    "the shared encoder inside the clients that hold both; the cosine between two clients' encoder updates at the "
    "server, over all pairs and over the pairs in which one client holds the first task but not the second and the "
    "other the second but not the first (`s-only vs t-only`); the share of client pairs whose updates conflict "
    "(negative cosine). Then mean ± std over seeds."
)


def cosine_columns(summaries: Sequence[ConflictSummary]) -> tuple[list[str], list[list[Spread | None]]]:
    """Labels and, per summary, its values: task-gradient cosines, client-update cosine (all pairs,
    then cross-task pairs); a pair absent from a summary is None."""
    pairs = sorted({pair for summary in summaries for pair in summary.task_cosine})
    cross = sorted({pair for summary in summaries for pair in summary.cross_task_cosine})
    header = [
        *(f"task-gradient cosine {s} vs {t}" for s, t in pairs),
        "client-update cosine",
        *(f"client-update cosine {s}-only vs {t}-only" for s, t in cross),
    ]
    rows = [
        [
            *(summary.task_cosine.get(pair) for pair in pairs),
            summary.client_cosine,
            *(summary.cross_task_cosine.get(pair) for pair in cross),
        ]
        for summary in summaries
    ]
    return header, rows


def conflict_columns(summaries: Sequence[ConflictSummary]) -> tuple[list[str], list[list[Spread | None]]]:
    """The table's columns: :func:`cosine_columns`, then the conflict fraction."""
    header, rows = cosine_columns(summaries)
    return [*header, "conflict fraction"], [[*row, s.conflict_fraction] for row, s in zip(rows, summaries)]
