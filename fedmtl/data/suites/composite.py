"""Several datasets in one federation, each serving its own clients (FedHCA²'s hetero-client setting:
PASCAL-Context's single-task clients beside NYUD-v2's multi-task clients).

``data: {name: composite, parts: [{suite: {name: shapes, ...}, clients: 4, prefix: a_}, {suite: ..., clients: 4}]}``:
the parts serve consecutive client ids in order (the first ``clients`` ids the first part, and so on),
each client's data coming from its part's suite as if that part were a federation of its own
``clients`` clients (its own split among them). A part's tasks are named with its ``prefix`` (tasks of
two parts must not share a name); ``clients.tasks`` lists each client's tasks from its own part. Every
part must give inputs of one size (and one image shape), so that one encoder reads them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from fedmtl.core.errors import FieldError, require
from fedmtl.data.suites.base import ClientData, ClientPlan, TaskSuite
from fedmtl.data.task_kinds import TaskSpec


@dataclass(frozen=True)
class Part:
    suite: TaskSuite  # {name: shapes | nyud | ..., ...}
    clients: int  # how many consecutive client ids this dataset serves
    prefix: str = ""  # prepended to this dataset's task names

    def __post_init__(self) -> None:
        require(self.clients >= 1, "clients", f"must be >= 1, got {self.clients}")


@dataclass(frozen=True)
class CompositeSuite(TaskSuite):
    name: ClassVar[str] = "composite"
    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        require(len(self.parts) >= 1, "parts", "needs at least one part")
        first = self.parts[0].suite
        for i, part in enumerate(self.parts[1:], 1):
            if (part.suite.feature_dim(), part.suite.image_shape()) != (first.feature_dim(), first.image_shape()):
                raise FieldError(
                    f"parts[{i}].suite",
                    f"gives inputs of {part.suite.feature_dim()} values (image {part.suite.image_shape()}); part 0 "
                    f"gives {first.feature_dim()} (image {first.image_shape()}): one encoder reads every part",
                )
        names = [spec.name for spec in self.task_specs()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        require(not repeated, "parts", f"tasks {repeated} are in two parts: give the parts different prefixes")

    def part_of(self, client_id: int) -> tuple[int, Part, int]:
        """(part index, part, the client's id within its part)."""
        offset = 0
        for index, part in enumerate(self.parts):
            if client_id < offset + part.clients:
                return index, part, client_id - offset
            offset += part.clients
        raise ValueError(f"client {client_id} is beyond the parts' {offset} clients")

    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(replace(spec, name=p.prefix + spec.name) for p in self.parts for spec in p.suite.task_specs())

    def feature_dim(self) -> int:
        return self.parts[0].suite.feature_dim()

    def image_shape(self) -> tuple[int, int, int] | None:
        return self.parts[0].suite.image_shape()

    def example_input(self) -> torch.Tensor:
        return torch.cat([p.suite.example_input() for p in self.parts])

    def default_sample_scale(self, task: str) -> float:
        for part in self.parts:
            if task.startswith(part.prefix) and task[len(part.prefix) :] in part.suite.task_names():
                return part.suite.default_sample_scale(task[len(part.prefix) :])
        return 1.0

    def check_clients(self, count: int) -> str | None:
        total = sum(p.clients for p in self.parts)
        if count != total:
            return f"is {count} but the parts serve {total} clients (data.parts[*].clients)"
        for part in self.parts:
            problem = part.suite.check_clients(part.clients)
            if problem:
                return problem
        return None

    def check_client_tasks(
        self, clients: Iterable[int], tasks_held: Callable[[int], tuple[str, ...]]
    ) -> tuple[int, str] | None:
        for client_id in clients:
            index, part, _ = self.part_of(client_id)
            own = {part.prefix + t for t in part.suite.task_names()}
            foreign = [t for t in tasks_held(client_id) if t not in own]
            if foreign:
                return (
                    client_id,
                    f"client {client_id} belongs to data.parts[{index}], whose tasks are {sorted(own)}; not {foreign}",
                )
        return None

    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        _, part, local_id = self.part_of(plan.client_id)
        tasks = tuple(t[len(part.prefix) :] for t in plan.tasks)
        data = part.suite.client_data(seed, replace(plan, client_id=local_id, num_clients=part.clients, tasks=tasks))
        return ClientData(
            train={part.prefix + t: d for t, d in data.train.items()},
            eval={part.prefix + t: d for t, d in data.eval.items()},
        )
