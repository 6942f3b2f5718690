"""The participants of a federation (config ``clients.participants``): who trains with which data.

A participant is what one node of the federation plays (node partition ``i`` plays participant ``i``).
Every study arm is a layout of participants (and a grouping of them into encoders, ``server.cohorts``):

* ``clients``: each client with every task it holds (federated multi-task learning);
* ``client_tasks``: each (client, task) held, alone (the single-task arms: with one encoder per task,
  ``fed_stl``; with one per participant, ``local_stl``);
* ``pooled``: one participant holding every client's training data, evaluated on each client's
  held-out data (centralised training, ``central_mtl``).

The first two are :class:`ParticipantTable` columns (a client id and a task set per participant), so that
a federation of a million clients takes megabytes, not one object per client, in the driver and in
every worker.
"""

from __future__ import annotations

import operator
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, overload

import numpy as np

from fedmtl.core.registry import Component, Registry

POOLED_CLIENT_ID = -1
"""The client id that a pooled participant's training rows carry (it trains for every client)."""

TaskSet = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Participant:
    """One node's part: the clients whose data it holds and the tasks it trains and evaluates."""

    index: int  # the node partition that plays it
    clients: tuple[int, ...]  # one client, or every member when pooled
    tasks: TaskSet
    pooled: bool = False  # trains on the clients' pooled data; evaluates each client on its own data

    @property
    def client_id(self) -> int:
        """The client id of its training rows (``POOLED_CLIENT_ID`` when pooled)."""
        return POOLED_CLIENT_ID if self.pooled else self.clients[0]


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value to compare by
class Members:
    """The clients that take part, in member order, with the tasks each trains: ``task_sets[task_set_of[m]]``
    for member ``m`` (a task set is stored once, however many clients hold it)."""

    clients: np.ndarray  # int64 client ids
    task_sets: tuple[TaskSet, ...]
    task_set_of: np.ndarray  # int64 positions in task_sets, one per member


def used_task_sets(task_sets: tuple[TaskSet, ...], task_set_of: np.ndarray) -> set[TaskSet]:
    """The task sets that ``task_set_of`` points at (each looked at once, however many point at it)."""
    return {task_sets[i] for i in np.unique(task_set_of).tolist()}


class ParticipantTable(Sequence[Participant]):
    """Participants of one client each, as columns: the client id and the task set of each, and the node
    partition when not in partition order. A participant is built when it is read; a million of them
    take 16 MB (two int64 columns), not about 170 bytes each as objects."""

    def __init__(
        self,
        clients: np.ndarray,
        task_sets: tuple[TaskSet, ...],
        task_set_of: np.ndarray,
        indices: np.ndarray | None = None,  # the partitions, when not 0, 1, 2, ...
    ) -> None:
        self._clients, self._task_sets, self._task_set_of, self._indices = clients, task_sets, task_set_of, indices

    def __len__(self) -> int:
        return len(self._clients)

    @overload
    def __getitem__(self, position: int) -> Participant: ...
    @overload
    def __getitem__(self, position: slice) -> tuple[Participant, ...]: ...
    def __getitem__(self, position: int | slice) -> Participant | tuple[Participant, ...]:
        if isinstance(position, slice):
            return tuple(self[i] for i in range(*position.indices(len(self))))
        i = operator.index(position)
        if not -len(self) <= i < len(self):
            raise IndexError(f"participant {i} of {len(self)}")
        index = i % len(self) if self._indices is None else int(self._indices[i])
        return Participant(index, (int(self._clients[i]),), self._task_sets[int(self._task_set_of[i])])

    def __iter__(self) -> Iterator[Participant]:
        task_sets = self._task_sets
        indices = range(len(self)) if self._indices is None else self._indices.tolist()
        for index, client, task_set in zip(indices, self._clients.tolist(), self._task_set_of.tolist()):
            yield Participant(index, (client,), task_sets[task_set])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParticipantTable):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # compared by content, so unhashable, like a list

    def __repr__(self) -> str:
        return f"ParticipantTable({len(self)} participants)"

    @property
    def client_ids(self) -> np.ndarray:
        """Each participant's client id, in table order (read-only)."""
        view = self._clients.view()
        view.flags.writeable = False
        return view

    def task_sets(self) -> set[TaskSet]:
        """The task sets some participant trains."""
        return used_task_sets(self._task_sets, self._task_set_of)

    def in_client_order(self) -> ParticipantTable:
        """The same participants sorted by (client id, partition); this table when already so."""
        clients, indices = self._clients, np.arange(len(self)) if self._indices is None else self._indices
        after = clients[1:] > clients[:-1]
        if np.all(after | ((clients[1:] == clients[:-1]) & (indices[1:] > indices[:-1]))):
            return self
        order = np.lexsort((indices, clients))
        return ParticipantTable(clients[order], self._task_sets, self._task_set_of[order], indices[order])


def client_ids(participants: Sequence[Participant]) -> np.ndarray:
    """Each participant's client id, in order (a table's column, without building its participants)."""
    if isinstance(participants, ParticipantTable):
        return participants.client_ids
    return np.array([p.client_id for p in participants], dtype=np.int64)


def participants_of_client(participants: Sequence[Participant], client_id: int) -> list[Participant]:
    """The participants that hold client ``client_id`` alone (not pooled), found in the client-id column."""
    at = np.flatnonzero(client_ids(participants) == client_id).tolist()
    return [p for i in at if not (p := participants[i]).pooled]


def task_sets(participants: Sequence[Participant]) -> set[TaskSet]:
    """The task sets some participant trains (a table's, without building its participants)."""
    if isinstance(participants, ParticipantTable):
        return participants.task_sets()
    return {p.tasks for p in participants}


class ParticipantLayout(Component):
    REGISTRY: ClassVar[Registry] = Registry("participant layout", (__name__,))

    @abstractmethod
    def layout(self, members: Members, task_names: Sequence[str]) -> Sequence[Participant]:
        """The participants formed from the members (``task_names``: the suite's tasks, in order)."""


@dataclass(frozen=True)
class ByClient(ParticipantLayout):
    """Each client is a participant with every task it holds (the federation)."""

    name: ClassVar[str] = "clients"

    def layout(self, members: Members, task_names: Sequence[str]) -> Sequence[Participant]:
        return ParticipantTable(members.clients, members.task_sets, members.task_set_of)


@dataclass(frozen=True)
class ByClientTask(ParticipantLayout):
    """Each (client, task) held is a participant that trains that task alone, on the client's data of it."""

    name: ClassVar[str] = "client_tasks"

    def layout(self, members: Members, task_names: Sequence[str]) -> Sequence[Participant]:
        singles = sorted({task for task_set in members.task_sets for task in task_set})
        single_of = {task: i for i, task in enumerate(singles)}
        per_set = [[single_of[task] for task in task_set] for task_set in members.task_sets]
        counts = np.array([len(s) for s in per_set], dtype=np.int64)[members.task_set_of]
        tasks = [single for s in members.task_set_of.tolist() for single in per_set[s]]
        return ParticipantTable(
            np.repeat(members.clients, counts), tuple((task,) for task in singles), np.array(tasks, dtype=np.int64)
        )


@dataclass(frozen=True)
class Pooled(ParticipantLayout):
    """One participant holding every member's training data (the tasks any member holds, in suite order)."""

    name: ClassVar[str] = "pooled"

    def layout(self, members: Members, task_names: Sequence[str]) -> Sequence[Participant]:
        held = {task for task_set in used_task_sets(members.task_sets, members.task_set_of) for task in task_set}
        tasks = tuple(task for task in task_names if task in held)
        return (Participant(0, tuple(members.clients.tolist()), tasks, pooled=True),)


PARTICIPANT_LAYOUTS = ParticipantLayout.REGISTRY
for _layout in (ByClient, ByClientTask, Pooled):
    PARTICIPANT_LAYOUTS.register(_layout)
