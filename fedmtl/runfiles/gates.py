"""A mixture of experts' gates as a run recorded them (``clients.jsonl``, column ``gates``): each client's
last reading per task, and how much two tasks route through the same experts.

The overlap of two usage vectors is ``sum_e min(u_e, v_e)``: 1 when they weigh the experts alike, 0 when
they use disjoint experts. Experts are federated, so expert ``e`` is the same network on every client and
usages compare across clients. A task pair's overlap is the mean over pairs of distinct (client, task)
readings, one of each task; a task with itself compares its holders with each other (the baseline that
another task's overlap is read against: tasks that find each other related share as much as one task's
holders do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement
from pathlib import Path

from fedmtl.core.files import read_rows
from fedmtl.runfiles.summary import format_grid


@dataclass(frozen=True)
class GateReading:
    client: int
    task: str
    round: int
    usage: tuple[float, ...]  # mean gate weight per expert on the client's training examples
    entropy: float  # mean entropy of the gate per example (nats)
    uniform_entropy: float  # log(experts): the gate at its start


@dataclass(frozen=True)
class TaskGates:
    task: str
    usage: tuple[float, ...]  # mean over the task's clients
    entropy: float
    uniform_entropy: float
    clients: int


def final_readings(path: Path) -> list[GateReading]:
    """Each (client, task)'s reading from the last round that client trained; empty without gates."""
    if not path.is_file():
        return []
    last: dict[tuple[int, str], GateReading] = {}
    for row in read_rows(path):
        for task, gate in (row.get("gates") or {}).items():
            last[int(row["client"]), task] = GateReading(
                int(row["client"]),
                task,
                int(row["round"]),
                tuple(float(u) for u in gate["usage"]),
                float(gate["entropy"]),
                float(gate["uniform_entropy"]),
            )
    return [last[key] for key in sorted(last)]


def per_task(readings: Sequence[GateReading]) -> list[TaskGates]:
    """The mean reading of each task over its clients, in task order of first appearance."""
    tasks = list(dict.fromkeys(r.task for r in readings))
    out = []
    for task in tasks:
        mine = [r for r in readings if r.task == task]
        experts = len(mine[0].usage)
        out.append(
            TaskGates(
                task,
                tuple(sum(r.usage[e] for r in mine) / len(mine) for e in range(experts)),
                sum(r.entropy for r in mine) / len(mine),
                mine[0].uniform_entropy,
                len(mine),
            )
        )
    return out


def overlap(first: Sequence[float], second: Sequence[float]) -> float:
    return float(sum(min(a, b) for a, b in zip(first, second, strict=True)))


def task_overlaps(readings: Sequence[GateReading]) -> dict[tuple[str, str], float]:
    """(task a, task b) -> mean overlap over pairs of distinct readings, one of each task (a <= b by
    first appearance); a pair with no two distinct readings is left out."""
    tasks = list(dict.fromkeys(r.task for r in readings))
    out = {}
    for a, b in combinations_with_replacement(tasks, 2):
        values = [
            overlap(x.usage, y.usage)
            for x in readings
            if x.task == a
            for y in readings
            if y.task == b and (x.client, x.task) != (y.client, y.task) and (a != b or x.client < y.client)
        ]
        if values:
            out[a, b] = sum(values) / len(values)
    return out


def gates_table(gates: Sequence[TaskGates]) -> str:
    """Per task: clients, the gate's mean entropy against the uniform mixture's, the usage of each expert."""
    experts = max(len(g.usage) for g in gates)
    header = ("task", "clients", "entropy (uniform)", *(f"expert {e}" for e in range(experts)))
    lines = [
        (g.task, str(g.clients), f"{g.entropy:.3f} ({g.uniform_entropy:.3f})", *(f"{u:.3f}" for u in g.usage))
        for g in gates
    ]
    return format_grid(header, lines)
