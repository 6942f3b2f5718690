"""Which tasks a local step trains on (config ``client.task_sampling``).

``all`` trains every held task each step. The others draw ``tasks_per_step`` distinct tasks
with probability ``p_t ∝ n_t^(1/T)`` (``n_t`` = the task's training samples on this client):
``proportional`` is T = 1, ``uniform`` is T = ∞, ``temperature`` takes T from the config
(temperature sampling as in Arivazhagan et al., 2019, for imbalanced tasks).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.core.registry import Component, Registry


class TaskSampler(Component):
    REGISTRY: ClassVar[Registry] = Registry("task sampler", (__name__,))

    @abstractmethod
    def choose(self, sizes: Mapping[str, int], generator: torch.Generator) -> list[str]:
        """The tasks for one step, in a stable order."""


@dataclass(frozen=True)
class AllTasks(TaskSampler):
    name: ClassVar[str] = "all"

    def choose(self, sizes: Mapping[str, int], generator: torch.Generator) -> list[str]:
        return list(sizes)


class _ExponentSampler(TaskSampler):
    tasks_per_step: int

    @property
    @abstractmethod
    def exponent(self) -> float:
        """``1/T`` in ``p_t ∝ n_t^(1/T)``."""

    def probabilities(self, sizes: Mapping[str, int]) -> dict[str, float]:
        scores = {t: math.pow(n, self.exponent) for t, n in sizes.items()}
        total = sum(scores.values())
        return {t: s / total for t, s in scores.items()}

    def choose(self, sizes: Mapping[str, int], generator: torch.Generator) -> list[str]:
        tasks = list(sizes)
        count = min(self.tasks_per_step, len(tasks))
        probs = torch.tensor([self.probabilities(sizes)[t] for t in tasks], dtype=torch.float64)
        picked = torch.multinomial(probs, count, replacement=False, generator=generator)
        return [tasks[i] for i in sorted(picked.tolist())]

    def _check(self) -> None:
        if self.tasks_per_step < 1:
            raise ValueError(f"tasks_per_step must be >= 1, got {self.tasks_per_step}")


@dataclass(frozen=True)
class Proportional(_ExponentSampler):
    name: ClassVar[str] = "proportional"
    tasks_per_step: int = 1
    exponent = 1.0  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self._check()


@dataclass(frozen=True)
class Uniform(_ExponentSampler):
    name: ClassVar[str] = "uniform"
    tasks_per_step: int = 1
    exponent = 0.0  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self._check()


@dataclass(frozen=True)
class Temperature(_ExponentSampler):
    name: ClassVar[str] = "temperature"
    temperature: float = 2.0
    tasks_per_step: int = 1

    def __post_init__(self) -> None:
        self._check()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def exponent(self) -> float:  # type: ignore[override]
        return 1.0 / self.temperature


TASK_SAMPLERS = TaskSampler.REGISTRY
for _sampler in (AllTasks, Proportional, Uniform, Temperature):
    TASK_SAMPLERS.register(_sampler)
