"""Every per-pixel metric and loss against a case computed by hand, invalid pixels left out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedmtl.data.dense_kinds import IGNORE_INDEX
from fedmtl.data.task_kinds import TASK_KINDS


def logits_for(classes: list[list[int]], count: int) -> torch.Tensor:
    """``[1, count, H, W]`` logits whose argmax is ``classes`` (10 on the chosen class, 0 elsewhere)."""
    return 10.0 * F.one_hot(torch.tensor(classes), count).permute(2, 0, 1).float()[None]


def test_segmentation_miou_pixel_accuracy_and_the_ignored_pixel():
    kind = TASK_KINDS["segmentation"]
    target = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    prediction = logits_for([[0, 1], [1, 0]], 4)  # class 3 is in neither: it does not count
    metrics = kind.metrics(prediction, target)
    # IoU: class 0 = 1/1 (the ignored pixel's prediction does not count), class 1 = 1/2, class 2 = 0/1
    assert metrics["miou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(2 / 3)
    log_softmax = prediction.log_softmax(1)[0]
    by_hand = -(log_softmax[0, 0, 0] + log_softmax[1, 0, 1] + log_softmax[2, 1, 0]) / 3
    assert kind.loss(prediction, target).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert metrics["nll"] == pytest.approx(by_hand.item(), rel=1e-6)
    changed = prediction.clone()
    changed[0, :, 1, 1] = torch.tensor([0.0, 0.0, 0.0, 30.0])  # only the ignored pixel changes
    assert kind.metrics(changed, target) == pytest.approx(metrics)
    assert 0 <= metrics["ece"] <= 1


def test_depth_rmse_l1_and_delta1_on_valid_pixels():
    kind = TASK_KINDS["depth"]
    prediction = torch.tensor([1.0, 2.0, -1.0, -1.0]).reshape(1, 1, 1, 4)
    target = torch.tensor([1.0, 4.0, 0.0, 1.0]).reshape(1, 1, 4)  # the third is missing depth
    metrics = kind.metrics(prediction, target)
    # errors 0, -2, -2 on the valid pixels; ratios 1 (in), 2 (out), a negative prediction (never in)
    assert metrics["rmse"] == pytest.approx(math.sqrt(8 / 3))
    assert metrics["l1"] == pytest.approx(4 / 3)
    assert metrics["delta1"] == pytest.approx(1 / 3)
    assert kind.loss(prediction, target).item() == pytest.approx(4 / 3)


def test_normals_angles_in_degrees_and_the_zero_length_target():
    kind = TASK_KINDS["normals"]
    target = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    prediction = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 1.0], [5.0, 1.0, 0.0]]).T.reshape(1, 3, 1, 3)
    metrics = kind.metrics(prediction, target)
    assert metrics["mean_angle"] == pytest.approx(22.5)  # 0 and 45 degrees; the third has no target
    assert metrics["median_angle"] == pytest.approx(22.5)
    assert metrics["within_11_25"] == pytest.approx(0.5)
    assert kind.loss(prediction, target).item() == pytest.approx((0 + 1 - math.cos(math.pi / 4)) / 2, rel=1e-6)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_binary_mask_iou_f_measures_and_the_balanced_loss():
    kind = TASK_KINDS["binary_mask"]
    probabilities = [0.9, 0.6, 0.3, 0.99]
    prediction = torch.tensor([logit(p) for p in probabilities]).reshape(1, 1, 1, 4)
    target = torch.tensor([1, 1, 0, IGNORE_INDEX]).reshape(1, 1, 4)
    metrics = kind.metrics(prediction, target)
    assert metrics["iou"] == pytest.approx(1.0)  # at 0.5: {0, 1} predicted, {0, 1} true
    assert metrics["f_measure"] == pytest.approx(1.0)
    assert metrics["max_f"] == pytest.approx(1.0)
    # positives weighted by the share of negatives (1/3), negatives by the share of positives (2/3)
    by_hand = -(math.log(0.9) / 3 + math.log(0.6) / 3 + 2 * math.log(0.7) / 3) / 3
    assert kind.loss(prediction, target).item() == pytest.approx(by_hand, rel=1e-5)


def test_binary_mask_at_a_threshold_that_misses():
    kind = TASK_KINDS["binary_mask"]
    prediction = torch.tensor([logit(p) for p in (0.9, 0.4, 0.2)]).reshape(1, 1, 1, 3)
    target = torch.tensor([1, 1, 0]).reshape(1, 1, 3)
    metrics = kind.metrics(prediction, target)
    assert metrics["iou"] == pytest.approx(1 / 2)  # {0} predicted, {0, 1} true
    assert metrics["f_measure"] == pytest.approx(2 * 1 * 0.5 / 1.5)  # P = 1, R = 1/2
    assert metrics["max_f"] == pytest.approx(1.0)  # any threshold in (0.2, 0.4] separates them


@pytest.mark.parametrize("name", ["segmentation", "depth", "normals", "binary_mask"])
def test_every_dense_kind_declares_its_headline_and_a_head_of_its_channels(name):
    kind = TASK_KINDS[name]
    assert kind.dense and kind.headline_metric in kind.metric_names
    channels = kind.output_dim(5)
    assert channels == {"segmentation": 5, "depth": 1, "normals": 3, "binary_mask": 1}[name]


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("segmentation", torch.full((1, 2, 2), IGNORE_INDEX)),
        ("depth", torch.zeros(1, 2, 2)),
        ("normals", torch.zeros(1, 3, 2, 2)),
        ("binary_mask", torch.full((1, 2, 2), IGNORE_INDEX)),
    ],
)
def test_a_set_without_a_valid_pixel_gives_nan_not_an_error(name, target):
    kind = TASK_KINDS[name]
    prediction = torch.zeros(1, kind.output_dim(3), 2, 2)
    assert all(math.isnan(v) for v in kind.metrics(prediction, target).values())
