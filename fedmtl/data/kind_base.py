"""The contract every task kind meets (:class:`TaskKind`), and the calibration measure kinds share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch


class TaskKind(ABC):
    """What a task's output means. ``dense``: one prediction per pixel of the input image, so the task's
    head is a decoder to the image's size (``output_dim`` channels) and its targets are maps."""

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]
    headline_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    dense: ClassVar[bool] = False

    @abstractmethod
    def output_dim(self, num_classes: int) -> int: ...

    @abstractmethod
    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]: ...

    def no_valid_pixel(self) -> dict[str, float]:
        """Every metric NaN: what a set without one valid label gives."""
        return dict.fromkeys(self.metric_names, float("nan"))


ECE_BINS = 15  # Guo et al. 2017's choice


def expected_calibration_error(probabilities: torch.Tensor, target: torch.Tensor, bins: int = ECE_BINS) -> float:
    """``sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|`` over ``bins`` equal-width bins of the top
    class's probability (Naeini et al., AAAI 2015; Guo et al., "On Calibration of Modern Neural
    Networks", ICML 2017); each bin ``(lo, hi]``, the first closed at 0."""
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == target).double()
    confidence = confidence.double()
    bin_of = (confidence * bins).ceil().long().clamp(1, bins) - 1
    total = torch.zeros((), dtype=torch.float64)
    for b in range(bins):
        members = bin_of == b
        if members.any():
            total += members.sum() * (correct[members].mean() - confidence[members].mean()).abs()
    return float(total / len(target))
