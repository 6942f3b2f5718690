"""Calibration beside accuracy: the expected calibration error against a hand-computed case, NLL as the
mean cross-entropy, and the study report comparing arms on them with the same paired tests."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fedmtl.data.task_kinds import CALIBRATION_METRICS, TASK_KINDS, expected_calibration_error
from fedmtl.report import calibration
from fedmtl.report.report import write_report
from tests.study._study import write_jsonl, write_study


def test_ece_matches_a_hand_computed_case():
    # top-class confidences 0.9 (right), 0.62 (wrong), 0.7 (right), 0.55 (right): bins (12/15, 13/15] ... apart
    probabilities = torch.tensor([[0.9, 0.1], [0.62, 0.38], [0.3, 0.7], [0.55, 0.45]], dtype=torch.float64)
    target = torch.tensor([0, 1, 1, 0])
    # one example per bin: (|1 - 0.9| + |0 - 0.62| + |1 - 0.7| + |1 - 0.55|) / 4
    assert expected_calibration_error(probabilities, target) == pytest.approx((0.1 + 0.62 + 0.3 + 0.45) / 4)
    # two in one bin: 0.56 and 0.55 share (8/15, 9/15]: |mean correct - mean confidence| counted twice
    probabilities[1] = torch.tensor([0.56, 0.44])
    assert expected_calibration_error(probabilities, target) == pytest.approx((0.1 + 2 * abs(0.5 - 0.555) + 0.3) / 4)


def test_confident_and_right_is_calibrated_and_nll_is_the_cross_entropy():
    kind = TASK_KINDS["classification"]
    logits = torch.tensor([[50.0, 0.0], [0.0, 50.0], [50.0, 0.0]])
    target = torch.tensor([0, 1, 0])
    metrics = kind.metrics(logits, target)
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-12) and metrics["accuracy"] == 1.0
    logits = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(1))
    metrics = kind.metrics(logits, target)
    assert metrics["nll"] == pytest.approx(float(F.cross_entropy(logits, target)))
    assert set(CALIBRATION_METRICS) == set(calibration.CALIBRATION_METRICS) <= set(kind.metric_names)
    assert not any(CALIBRATION_METRICS.values())  # both lower is better, as the report compares them


def test_the_report_compares_arms_on_calibration_with_the_paired_tests(tmp_path):
    root = write_study(tmp_path / "s")
    plain = write_report(root)
    assert plain["calibration"] == {} and "## Calibration" not in (root / "report.md").read_text()
    for arm, ece in (("fed_mtl", 0.05), ("local_stl", 0.10)):  # fed_mtl better calibrated on every seed
        for seed in (0, 1, 2):
            path = root / f"arms/{arm}/seed-{seed}/metrics.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            for row in rows:
                if row["task"] == "cls":
                    row["ece"] = ece + 0.001 * seed * (arm == "fed_mtl")
            write_jsonl(path, rows)
    summary = write_report(root)
    assert list(summary["calibration"]) == ["ece"]  # no run reported nll; reg reports neither
    (comparison,) = summary["calibration"]["ece"]
    assert list(comparison["tasks"]) == ["cls"]
    cls = comparison["tasks"]["cls"]
    expected = [0.10 - (0.05 + 0.001 * s) for s in (0, 1, 2)]  # lower is better; ece: absolute, base - arm
    assert list(cls["per_seed"].values()) == pytest.approx(expected)
    assert cls["verdict"] == "better"
    assert "## Calibration" in (root / "report.md").read_text()
