"""Per-pixel task kinds (FMTL-Bench, arXiv 2402.12876; FedHCA², CVPR 2024; MTI-Net, ECCV 2020): the
prediction is ``[N, C, H, W]``, one value or distribution per pixel of the input image.

Missing labels are the datasets' own conventions: segmentation pixels labelled :data:`IGNORE_INDEX`,
depth ``<= 0`` (NYUD-v2's missing depth), normals of zero length, mask pixels labelled :data:`IGNORE_INDEX`;
those pixels count in neither the loss nor the metrics. Every metric is over all valid pixels of the
evaluated set at once (mIoU from one confusion matrix, as the papers compute it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fedmtl.data.kind_base import TaskKind, expected_calibration_error

IGNORE_INDEX = 255  # segmentation and mask pixels without a label (NYUD-v2 and PASCAL-Context use 255)
DELTA_THRESHOLD = 1.25  # depth: share of pixels with max(p / t, t / p) < 1.25 (Eigen et al., NIPS 2014)
ANGLE_WITHIN = 11.25  # normals: share of pixels within 11.25 degrees (Fouhey et al., ICCV 2013)
F_BETA_SQUARED = 0.3  # masks: the saliency F-measure's beta^2 (Achanta et al., CVPR 2009)
F_THRESHOLDS = torch.linspace(0.05, 0.95, 19)  # masks: thresholds max_f searches


def label_boundary(labels: np.ndarray) -> np.ndarray:
    """``int64`` 1 where a 4-neighbour (along the last two axes) has another label: the edge map of a
    label map, ``[..., H, W]``, two pixels wide (one on each side of a change)."""
    edge = np.zeros(labels.shape, dtype=np.int64)
    down, right = labels[..., 1:, :] != labels[..., :-1, :], labels[..., :, 1:] != labels[..., :, :-1]
    edge[..., 1:, :] |= down
    edge[..., :-1, :] |= down
    edge[..., :, 1:] |= right
    edge[..., :, :-1] |= right
    return edge


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """``[classes, classes]`` counts, rows the true class; ``predicted`` and ``target`` flat, valid only."""
    return torch.bincount(target * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean over classes present in the target or the prediction of ``TP / (TP + FP + FN)``."""
    true_positive = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - true_positive
    present = union > 0
    return float((true_positive[present] / union[present]).mean()) if present.any() else float("nan")


class Segmentation(TaskKind):
    """Semantic segmentation: per-pixel cross-entropy ignoring :data:`IGNORE_INDEX`; headline mIoU, beside
    it pixel accuracy and per-pixel calibration (``nll``, ``ece``)."""

    name = "segmentation"
    metric_names = ("miou", "pixel_accuracy", "nll", "ece")
    headline_metric = "miou"
    higher_is_better = True
    dense = True

    def output_dim(self, num_classes: int) -> int:
        return num_classes

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(prediction, target, ignore_index=IGNORE_INDEX)

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        classes = prediction.shape[1]
        logits = prediction.movedim(1, -1).reshape(-1, classes)
        labels = target.reshape(-1)
        valid = labels != IGNORE_INDEX
        logits, labels = logits[valid], labels[valid]
        if len(labels) == 0:
            return self.no_valid_pixel()
        predicted = logits.argmax(-1)
        return {
            "miou": mean_iou(confusion_matrix(predicted, labels, classes)),
            "pixel_accuracy": (predicted == labels).double().mean().item(),
            "nll": F.cross_entropy(logits, labels).item(),
            "ece": expected_calibration_error(logits.softmax(-1), labels),
        }


class Depth(TaskKind):
    """Depth per pixel: L1 loss on pixels with depth ``> 0``; headline RMSE, beside it mean absolute
    error (``l1``) and ``delta1``, the share of pixels with ``max(p / t, t / p) < 1.25``."""

    name = "depth"
    metric_names = ("rmse", "l1", "delta1")
    headline_metric = "rmse"
    higher_is_better = False
    dense = True

    def output_dim(self, num_classes: int) -> int:
        return 1

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target > 0
        return (prediction[:, 0][valid] - target[valid]).abs().mean()

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        valid = target > 0
        predicted, truth = prediction[:, 0][valid].double(), target[valid].double()
        if len(truth) == 0:
            return self.no_valid_pixel()
        error = predicted - truth
        positive = predicted.clamp_min(1e-9)  # a prediction <= 0 is never within the ratio
        ratio = torch.maximum(positive / truth, truth / positive)
        return {
            "rmse": error.pow(2).mean().sqrt().item(),
            "l1": error.abs().mean().item(),
            "delta1": (ratio < DELTA_THRESHOLD).double().mean().item(),
        }


class SurfaceNormals(TaskKind):
    """Unit surface normals ``[N, 3, H, W]``: loss ``1 - cos`` between the normalised prediction and the
    target on pixels whose target has non-zero length; headline mean angular error in degrees, beside it
    the median and ``within_11_25``, the share of pixels within 11.25 degrees."""

    name = "normals"
    metric_names = ("mean_angle", "median_angle", "within_11_25")
    headline_metric = "mean_angle"
    higher_is_better = False
    dense = True

    def output_dim(self, num_classes: int) -> int:
        return 3

    @staticmethod
    def _cosines(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target.norm(dim=1) > 0
        cosine = (F.normalize(prediction, dim=1) * F.normalize(target, dim=1)).sum(1)
        return cosine[valid]

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - self._cosines(prediction, target)).mean()

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        cosine = self._cosines(prediction.detach().double().cpu(), target.double().cpu())
        if len(cosine) == 0:
            return self.no_valid_pixel()
        angle = torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))
        return {
            "mean_angle": angle.mean().item(),
            "median_angle": float(np.median(angle.numpy())),  # the midpoint of the two middle values
            "within_11_25": (angle < ANGLE_WITHIN).double().mean().item(),
        }


def f_measure(predicted: torch.Tensor, truth: torch.Tensor, beta_squared: float) -> float:
    """``(1 + b^2) P R / (b^2 P + R)`` of boolean maps; 0 when nothing is predicted or nothing is true."""
    hits = float((predicted & truth).sum())
    precision = hits / max(float(predicted.sum()), 1.0)
    recall = hits / max(float(truth.sum()), 1.0)
    denominator = beta_squared * precision + recall
    return (1 + beta_squared) * precision * recall / denominator if denominator > 0 else 0.0


class BinaryMask(TaskKind):
    """A binary map per pixel (edges, saliency), labels 0/1 and :data:`IGNORE_INDEX`: class-balanced binary
    cross-entropy (HED, Xie & Tu, ICCV 2015: positives weighted by the share of negatives in the batch,
    so sparse edges are not learned away); headline foreground IoU at probability 0.5, beside it F1 at
    0.5 (``f_measure``) and ``max_f``, the saliency F-measure (beta^2 = 0.3) at its best threshold."""

    name = "binary_mask"
    metric_names = ("iou", "f_measure", "max_f")
    headline_metric = "iou"
    higher_is_better = True
    dense = True

    def output_dim(self, num_classes: int) -> int:
        return 1

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE_INDEX
        logits, labels = prediction[:, 0][valid], target[valid].float()
        negatives = 1.0 - labels.mean()
        weight = torch.where(labels > 0.5, negatives, 1.0 - negatives)
        return F.binary_cross_entropy_with_logits(logits, labels, weight=weight)

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        valid = target != IGNORE_INDEX
        probability, truth = prediction[:, 0][valid].sigmoid(), target[valid] > 0.5
        if len(truth) == 0:
            return self.no_valid_pixel()
        predicted = probability > 0.5
        union = float((predicted | truth).sum())
        return {
            "iou": float((predicted & truth).sum()) / union if union > 0 else math.nan,
            "f_measure": f_measure(predicted, truth, 1.0),
            "max_f": max(f_measure(probability > t, truth, F_BETA_SQUARED) for t in F_THRESHOLDS.tolist()),
        }


DENSE_KINDS: tuple[TaskKind, ...] = (Segmentation(), Depth(), SurfaceNormals(), BinaryMask())
