"""Task suites: where tasks and per-client data come from.

A suite is a frozen dataclass (its fields are the suite's config, under ``data:`` in YAML)
registered by ``name``. The training loop sees only :class:`TaskSpec` and :class:`TaskData`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.core.registry import Component, Registry
from fedmtl.data.task_kinds import TaskSpec


@dataclass(frozen=True)
class TaskData:
    """Inputs ``x`` ``[N, D]`` and targets ``y`` (``[N]`` float for regression, long for classes)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class ClientPlan:
    """What one client holds: which tasks, and how many train/eval samples of each."""

    client_id: int
    num_clients: int
    tasks: tuple[str, ...]
    train_samples: tuple[int, ...]
    eval_samples: tuple[int, ...]
    task_scale: tuple[float, ...] = ()  # clients.task_sample_scale per held task (1.0 when not set)


@dataclass(frozen=True)
class ClientData:
    train: dict[str, TaskData]
    eval: dict[str, TaskData]


class TaskSuite(Component):
    REGISTRY: ClassVar[Registry] = Registry("data suite", ("fedmtl.data.suites",))
    # True when a client's tasks are questions about the same examples in the same order (a task that
    # clients.task_sample_scale subsamples keeps a prefix), so that each example has every task's label:
    # what another task's leaked label (data_issues: leakage) and a joint head (model.joint_heads) need.
    tasks_share_examples: ClassVar[bool] = False

    @abstractmethod
    def task_specs(self) -> tuple[TaskSpec, ...]:
        """The tasks this suite defines, in a fixed order."""

    @abstractmethod
    def feature_dim(self) -> int:
        """Length of one input vector."""

    @abstractmethod
    def client_data(self, seed: int, plan: ClientPlan) -> ClientData:
        """Build one client's data, deterministically from ``seed`` and the plan."""

    def image_shape(self) -> tuple[int, int, int] | None:
        """``(channels, height, width)`` when inputs are flattened images (a CNN encoder needs it)."""
        return None

    def example_input(self) -> torch.Tensor:
        """Two inputs that reach the extremes of this suite's values, run through the encoder when the
        config is checked (zeros; a text suite gives its largest token id, which the encoder's vocabulary
        must hold)."""
        return torch.zeros(2, self.feature_dim())

    def default_sample_scale(self, task: str) -> float:
        """Multiplier on a task's training samples when ``clients.task_sample_scale`` does not set one."""
        return 1.0

    def check_clients(self, count: int) -> str | None:
        """Why this suite cannot serve ``count`` clients (e.g. too few natural partitions), or None."""
        return None

    def check_client_tasks(
        self, clients: Iterable[int], tasks_held: Callable[[int], tuple[str, ...]]
    ) -> tuple[int, str] | None:
        """The first of ``clients`` that cannot hold its tasks (e.g. they belong to another client's dataset),
        and why; None when every one can. A suite that accepts any tasks looks at no client (a million)."""
        return None

    def task_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.task_specs())
