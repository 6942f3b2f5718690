"""What a task's output means: its loss, its metrics, and which metric is the headline.

A task kind is chosen by name in a suite's task list; the training loop calls these hooks
and never branches on the kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedmtl.data.dense_kinds import DENSE_KINDS
from fedmtl.data.kind_base import TaskKind, expected_calibration_error

__all__ = ["CALIBRATION_METRICS", "TASK_KINDS", "TaskKind", "TaskSpec", "expected_calibration_error"]


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
    """Multi-class classification, cross-entropy; headline metric accuracy. Beside it, calibration:
    negative log-likelihood (the mean cross-entropy) and expected calibration error (``ece``, 15 bins);
    both lower is better (:data:`CALIBRATION_METRICS`)."""

    name = "classification"
    metric_names = ("accuracy", "nll", "ece")
    headline_metric = "accuracy"
    higher_is_better = True

    def output_dim(self, num_classes: int) -> int:
        return num_classes

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(prediction, target)

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {
            "accuracy": (prediction.argmax(-1) == target).float().mean().item(),
            "nll": F.cross_entropy(prediction, target).item(),
            "ece": expected_calibration_error(prediction.softmax(-1), target),
        }


def f1(hits: torch.Tensor, predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """``2 TP / (predicted + true)`` elementwise (NaN where both are 0)."""
    return 2 * hits / (predicted + true)


class MultiLabel(TaskKind):
    """Several yes/no labels per example (``num_classes`` of them): binary cross-entropy per label;
    headline micro-averaged F1 at probability 0.5, beside it macro F1 (over the labels that occur in the
    targets or the predictions) and subset accuracy (every label right)."""

    name = "multilabel"
    metric_names = ("micro_f1", "macro_f1", "subset_accuracy")
    headline_metric = "micro_f1"
    higher_is_better = True

    def output_dim(self, num_classes: int) -> int:
        return num_classes

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(prediction, target.float())

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        predicted, true = prediction > 0, target > 0.5
        hits = (predicted & true).double()
        per_label = f1(hits.sum(0), predicted.double().sum(0), true.double().sum(0))
        occurring = ~per_label.isnan()
        return {
            "micro_f1": float(f1(hits.sum(), predicted.double().sum(), true.double().sum()).nan_to_num(0.0)),
            "macro_f1": float(per_label[occurring].mean()) if occurring.any() else float("nan"),
            "subset_accuracy": (predicted == true).all(-1).double().mean().item(),
        }


CALIBRATION_METRICS = {
    "nll": False,
    "ece": False,
}  # metric -> higher is better (the study report compares arms on them)


TASK_KINDS: dict[str, TaskKind] = {
    kind.name: kind for kind in (Regression(), Classification(), MultiLabel(), *DENSE_KINDS)
}


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
