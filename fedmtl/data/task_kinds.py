"""What a task's output means: its loss, its metrics, and which metric is the headline.

A task kind is chosen by name in a suite's task list; the training loop calls these hooks
and never branches on the kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F


class TaskKind(ABC):
    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]
    headline_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]

    @abstractmethod
    def output_dim(self, num_classes: int) -> int: ...

    @abstractmethod
    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]: ...


class Regression(TaskKind):
    """Scalar regression, squared error; headline metric MSE (lower is better), plus R^2."""

    name = "regression"
    metric_names = ("mse", "r2")
    headline_metric = "mse"
    higher_is_better = False

    def output_dim(self, num_classes: int) -> int:
        return 1

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction.squeeze(-1), target)

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        mse = F.mse_loss(prediction.squeeze(-1), target).item()
        variance = target.var(unbiased=False).item()
        return {"mse": mse, "r2": 1.0 - mse / variance if variance > 0 else float("nan")}


class Classification(TaskKind):
    """Multi-class classification, cross-entropy; headline metric accuracy."""

    name = "classification"
    metric_names = ("accuracy",)
    headline_metric = "accuracy"
    higher_is_better = True

    def output_dim(self, num_classes: int) -> int:
        return num_classes

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(prediction, target)

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {"accuracy": (prediction.argmax(-1) == target).float().mean().item()}


TASK_KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (Regression(), Classification())}


@dataclass(frozen=True)
class TaskSpec:
    """A task as the model and training loop see it (suite-independent)."""

    name: str
    kind: str
    num_classes: int = 1

    @property
    def kind_impl(self) -> TaskKind:
        return TASK_KINDS[self.kind]

    @property
    def output_dim(self) -> int:
        return self.kind_impl.output_dim(self.num_classes)
