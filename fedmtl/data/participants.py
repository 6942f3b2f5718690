"""The participants of a federation (config ``clients.participants``): who trains with which data.

A participant is what one node of the federation plays (node partition ``i`` plays participant ``i``).
Every study arm is a layout of participants (and a grouping of them into encoders, ``server.cohorts``):

* ``clients``: each client with every task it holds (federated multi-task learning);
* ``client_tasks``: each (client, task) held, alone (the single-task arms: with one encoder per task,
  ``fed_stl``; with one per participant, ``local_stl``);
* ``pooled``: one participant holding every client's training data, evaluated on each client's
  held-out data (centralised training, ``central_mtl``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from fedmtl.core.registry import Component, Registry

POOLED_CLIENT_ID = -1
"""The client id that a pooled participant's training rows carry (it trains for every client)."""


@dataclass(frozen=True, slots=True)  # slots: a federation may hold a million of them
class Participant:
    """One node's part: the clients whose data it holds and the tasks it trains and evaluates."""

    index: int  # the node partition that plays it
    clients: tuple[int, ...]  # one client, or every member when pooled
    tasks: tuple[str, ...]
    pooled: bool = False  # trains on the clients' pooled data; evaluates each client on its own data

    @property
    def client_id(self) -> int:
        """The client id of its training rows (``POOLED_CLIENT_ID`` when pooled)."""
        return POOLED_CLIENT_ID if self.pooled else self.clients[0]


ClientTasks = Sequence[tuple[int, tuple[str, ...]]]
"""(client id, the tasks it trains) for every member, in member order."""


class ParticipantLayout(Component):
    REGISTRY: ClassVar[Registry] = Registry("participant layout", (__name__,))

    @abstractmethod
    def layout(self, members: ClientTasks, task_names: Sequence[str]) -> tuple[Participant, ...]:
        """The participants formed from the members (``task_names``: the suite's tasks, in order)."""


@dataclass(frozen=True)
class ByClient(ParticipantLayout):
    """Each client is a participant with every task it holds (the federation)."""

    name: ClassVar[str] = "clients"

    def layout(self, members: ClientTasks, task_names: Sequence[str]) -> tuple[Participant, ...]:
        return tuple(Participant(i, (client,), tasks) for i, (client, tasks) in enumerate(members))


@dataclass(frozen=True)
class ByClientTask(ParticipantLayout):
    """Each (client, task) held is a participant that trains that task alone, on the client's data of it."""

    name: ClassVar[str] = "client_tasks"

    def layout(self, members: ClientTasks, task_names: Sequence[str]) -> tuple[Participant, ...]:
        pairs = [(client, task) for client, tasks in members for task in tasks]
        return tuple(Participant(i, (client,), (task,)) for i, (client, task) in enumerate(pairs))


@dataclass(frozen=True)
class Pooled(ParticipantLayout):
    """One participant holding every member's training data (the tasks any member holds, in suite order)."""

    name: ClassVar[str] = "pooled"

    def layout(self, members: ClientTasks, task_names: Sequence[str]) -> tuple[Participant, ...]:
        held = {task for _, tasks in members for task in tasks}
        tasks = tuple(task for task in task_names if task in held)
        return (Participant(0, tuple(client for client, _ in members), tasks, pooled=True),)


PARTICIPANT_LAYOUTS = ParticipantLayout.REGISTRY
for _layout in (ByClient, ByClientTask, Pooled):
    PARTICIPANT_LAYOUTS.register(_layout)
