"""Which participants share an encoder (config ``server.cohorts``): the server keeps one encoder per
cohort, and aggregates each cohort's updates on their own.

* ``one``: every participant shares one encoder (the federation).
* ``task``: one encoder per task, shared by the participants that train it (each participant must
  train one task: ``clients.participants: client_tasks``; the ``fed_stl`` arm).
* ``participant``: every participant keeps its own encoder; nothing is aggregated (local training:
  the ``local_stl`` and ``central_mtl`` arms). The cohort's encoder *is* its member's last update.

Pure functions of the participants; later groupings (clusters of clients, task affinity) are further
members of this registry.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from fedmtl.core.registry import Component, Registry
from fedmtl.data.participants import Participant

CohortKey = str


class Cohorts(Component):
    """A grouping of participants into cohorts. ``adopts``: every cohort has one member whose trained
    encoder becomes the cohort's as it is (no aggregator, no server optimizer)."""

    REGISTRY: ClassVar[Registry] = Registry("cohort rule", (__name__,))
    adopts: ClassVar[bool] = False

    @abstractmethod
    def split(self, participants: Sequence[Participant]) -> dict[CohortKey, Sequence[Participant]]:
        """The key of each cohort (keys sort in the order cohorts are reported) -> its members, in the
        order of ``participants``."""

    def check(self, participants: Sequence[Participant]) -> str | None:
        """Why this rule cannot group these participants, or None."""
        return None


@dataclass(frozen=True)
class OneCohort(Cohorts):
    """Every participant shares one encoder."""

    name: ClassVar[str] = "one"

    def split(self, participants: Sequence[Participant]) -> dict[CohortKey, Sequence[Participant]]:
        return {"all": participants}  # as given: a million participants stay one table, not one list


@dataclass(frozen=True)
class PerTask(Cohorts):
    """One encoder per task, shared by the participants that train that task."""

    name: ClassVar[str] = "task"

    def split(self, participants: Sequence[Participant]) -> dict[CohortKey, Sequence[Participant]]:
        members: dict[CohortKey, list[Participant]] = {}
        for p in participants:
            members.setdefault(p.tasks[0], []).append(p)
        return {task: tuple(ps) for task, ps in members.items()}

    def check(self, participants: Sequence[Participant]) -> str | None:
        several = next((p for p in participants if len(p.tasks) != 1), None)
        if several is None:
            return None
        return f"needs participants that train one task each (clients.participants: client_tasks); participant {several.index} trains {list(several.tasks)}"


@dataclass(frozen=True)
class PerParticipant(Cohorts):
    """Every participant keeps its own encoder (local training: nothing is aggregated)."""

    name: ClassVar[str] = "participant"
    adopts: ClassVar[bool] = True

    def split(self, participants: Sequence[Participant]) -> dict[CohortKey, Sequence[Participant]]:
        width = len(str(max(len(participants) - 1, 0)))
        return {f"participant-{p.index:0{width}d}": (p,) for p in participants}


COHORT_RULES = Cohorts.REGISTRY
for _rule in (OneCohort, PerTask, PerParticipant):
    COHORT_RULES.register(_rule)
