"""Who holds which data: the clients of the experiment (config ``clients``) and the participants they form."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedmtl.core.errors import require
from fedmtl.data.participants import ByClient, Members, Participant, ParticipantLayout, TaskSet


@dataclass(frozen=True)
class ClientsConfig:
    count: int = 8  # number of simulated clients
    # Explicit task lists, one per client. When empty, client i holds ``tasks_per_client`` tasks
    # starting at task (i mod T), wrapping around: neighbouring clients overlap in one task.
    tasks: tuple[tuple[str, ...], ...] = ()
    tasks_per_client: int = 2  # tasks each client holds when tasks is empty
    samples_per_task: int = 128  # mean training samples per (client, task)
    # Log-normal sigma of a per-client factor on sample counts (0 = every client equal).
    sample_imbalance: float = 0.5
    # Per-task multiplier on training samples, e.g. {aligned: 0.25} makes a data-poor task
    # (overrides the suite's own default, e.g. the synthetic tasks' sample_scale).
    task_sample_scale: Mapping[str, float] = field(default_factory=dict)
    eval_samples_per_task: int = 256  # held-out samples per (client, task) for evaluation
    min_samples: int = 8  # floor on training samples per (client, task)
    # Restrict every client to these tasks (data and sample counts unchanged); used by the
    # single-task study arms. Empty = every task a client holds.
    only_tasks: tuple[str, ...] = ()
    # Which client ids take part (in the order of participants; data unchanged). Empty = all of 0..count-1.
    members: tuple[int, ...] = ()
    # Who trains: clients (each client with every task it holds: the federation), client_tasks (each
    # (client, task) held alone: the single-task arms) or pooled (one participant with every client's
    # training data: centralised training, evaluated on each client's held-out data).
    participants: ParticipantLayout = field(default_factory=ByClient)

    def __post_init__(self) -> None:
        require(self.count >= 1, "count", f"must be >= 1, got {self.count}")
        require(self.tasks_per_client >= 1, "tasks_per_client", f"must be >= 1, got {self.tasks_per_client}")
        for key in ("samples_per_task", "eval_samples_per_task", "min_samples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.sample_imbalance >= 0, "sample_imbalance", f"must be >= 0, got {self.sample_imbalance}")
        for task, scale in self.task_sample_scale.items():
            require(scale > 0, f"task_sample_scale.{task}", f"must be > 0, got {scale}")
        require(
            all(0 <= m < self.count for m in self.members) and len(set(self.members)) == len(self.members),
            "members",
            f"must be distinct client ids in [0, {self.count}), got {list(self.members)}",
        )

    def member_ids(self) -> Sequence[int]:
        """The client ids that take part, in order (a ``range`` when all do: no million-entry tuple per call)."""
        return self.members or range(self.count)

    def tasks_held(self, client_id: int, task_names: Sequence[str]) -> tuple[str, ...]:
        """The tasks client ``client_id`` holds (``tasks``, or ``tasks_per_client`` from task ``i mod T``),
        before ``only_tasks``; ``task_names``: the suite's tasks in order."""
        if self.tasks:
            return self.tasks[client_id]
        return _held_in_turn(client_id % len(task_names), tuple(task_names), self.tasks_per_client)

    def tasks_of(self, client_id: int, task_names: Sequence[str]) -> tuple[str, ...]:
        """The tasks the client trains and evaluates: those it holds, restricted by ``only_tasks``."""
        held = self.tasks_held(client_id, task_names)
        return tuple(t for t in held if t in self.only_tasks) if self.only_tasks else held

    def layout(self, task_names: Sequence[str]) -> Sequence[Participant]:
        """The participants of the federation, in partition order (``participants``)."""
        return self.participants.layout(self.members_with_tasks(task_names), task_names)

    def members_with_tasks(self, task_names: Sequence[str]) -> Members:
        """The members and the tasks each trains, as columns: with ``tasks`` empty, a client's tasks depend
        only on its id modulo the number of tasks, so a million members need no per-client Python work."""
        clients = np.array(self.members, dtype=np.int64) if self.members else np.arange(self.count, dtype=np.int64)
        if self.tasks:
            interned: dict[TaskSet, int] = {}
            task_set_of = [interned.setdefault(self.tasks_of(c, task_names), len(interned)) for c in clients.tolist()]
            return Members(clients, tuple(interned), np.array(task_set_of, dtype=np.int64))
        task_sets = tuple(self.tasks_of(first, task_names) for first in range(len(task_names)))
        return Members(clients, task_sets, clients % len(task_names))


@functools.lru_cache(maxsize=1024)
def _held_in_turn(first: int, task_names: tuple[str, ...], count: int) -> tuple[str, ...]:
    """``count`` tasks in turn from task ``first``: one tuple per residue, shared by a million clients."""
    return tuple(task_names[(first + j) % len(task_names)] for j in range(count))
