"""Conflict diagnostics summarised over rounds then seeds, and their place in the sweep report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmtl.report.collect import Run, RunResult, ServerRound, collect_study
from fedmtl.report.conflict import cross_task_cosine_per_seed, summarize_conflict
from fedmtl.report.sweep import write_sweep_report

from ._study import write_study
from .test_sweep import write_sweep


def test_summary_is_the_mean_over_rounds_and_clients_then_over_seeds(tmp_path: Path) -> None:
    # _study writes task cosines 0.1 r - 0.1 c (rounds 1..3, clients 0, 1) -> mean 0.15 on every seed,
    # client-update cosines -0.6 + 0.5 r -> -0.1, 0.4, 0.9 -> mean 0.4, conflict fraction 1, 0, 0 -> 1/3.
    data = collect_study(write_study(tmp_path / "study"))
    summary = summarize_conflict(data, "fed_mtl")
    assert list(summary.task_cosine) == [("cls", "reg")]
    assert summary.task_cosine["cls", "reg"].mean == pytest.approx(0.15)
    assert summary.task_cosine["cls", "reg"].std == pytest.approx(0.0)
    assert summary.task_cosine["cls", "reg"].n == 3
    assert summary.client_cosine is not None and summary.client_cosine.mean == pytest.approx(0.4)
    assert summary.conflict_fraction is not None and summary.conflict_fraction.mean == pytest.approx(1 / 3)


def _round(number: int, clients: tuple[int, ...], cosines: list[list[float]]) -> ServerRound:
    return ServerRound(number, None, clients, np.asarray(cosines), None, None)


def test_cross_task_cosine_counts_only_pairs_that_hold_one_task_each() -> None:
    # clients 0 and 3 hold a only, 1 holds b only, 2 holds both: the (a, b) pairs are (0, 1) and (1, 3);
    # (0, 2), (1, 2), (2, 3) share a task and (0, 3) hold the same one. Rows and columns follow the
    # round's client order, which is not the client ids' order.
    held = {"a": {0: 1.0, 2: 1.0, 3: 1.0}, "b": {1: 1.0, 2: 1.0}}
    first = [[1, 0.2, 9, 9], [0.2, 1, 9, 0.6], [9, 9, 1, 9], [9, 0.6, 9, 1]]  # clients 0, 1, 2, 3
    second = [[1, 9, -0.4], [9, 1, 9], [-0.4, 9, 1]]  # clients 3, 2, 1 (0 not sampled in round 2)
    result = RunResult(
        Run("fed_mtl", 0, Path("."), "done"),
        final={},
        final_by_client=held,
        curves={},
        server=(_round(1, (0, 1, 2, 3), first), _round(2, (3, 2, 1), second)),
        task_cosines=(),
    )
    assert cross_task_cosine_per_seed(result) == {("a", "b"): pytest.approx((0.2 + 0.6 - 0.4) / 3)}


def test_an_arm_without_diagnostics_has_none(tmp_path: Path) -> None:
    data = collect_study(write_study(tmp_path / "study"))
    summary = summarize_conflict(data, "local_stl")  # no task cosines, no server rows
    assert summary.task_cosine == {}
    assert summary.client_cosine is None and summary.conflict_fraction is None
    assert summary.cross_task_cosine == {}


def test_the_sweep_report_puts_the_diagnostics_beside_the_swept_value(tmp_path: Path) -> None:
    root = write_sweep(tmp_path / "sweep", ["data.task_cosine"], [{"data.task_cosine": 0.9}, {"data.task_cosine": 0.0}])
    write_sweep_report(root)
    report = (root / "sweep.md").read_text()
    assert "## Conflict diagnostics (fed_mtl)" in report
    assert "| p0 | 0.9 | +0.150 ± 0.000 | +0.400 ± 0.000 | +0.333 ± 0.000 |" in report
    assert (root / "sweep_conflict.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_json_holds_every_arms_diagnostics(tmp_path: Path) -> None:
    from fedmtl.report.analysis import summarize

    summary = summarize(collect_study(write_study(tmp_path / "study")))
    assert summary["conflict"]["fed_mtl"]["task_cosine"]["cls|reg"]["mean"] == pytest.approx(0.15)
    assert summary["conflict"]["local_stl"]["client_cosine"] is None


def test_the_study_report_has_a_conflict_table_for_arms_with_diagnostics(tmp_path: Path) -> None:
    from fedmtl.report.report import write_report

    root = write_study(tmp_path / "study")
    write_report(root)
    report = (root / "report.md").read_text()
    assert "## Conflict diagnostics" in report
    assert "| `fed_mtl` | +0.150 ± 0.000 | +0.400 ± 0.000 | +0.333 ± 0.000 |" in report
    assert "| `local_stl` |" not in report.split("## Conflict diagnostics")[1].split("##")[0]


def test_clients_holding_one_task_each_give_a_cross_task_column_everywhere(tmp_path: Path) -> None:
    from fedmtl.report.report import write_report

    # client 0 holds cls only, client 1 reg only: their update cosine (-0.6 + 0.5 r, mean 0.4) is the
    # cross-task cosine; no client holds both, so there is no in-client task-gradient cosine.
    root = write_study(tmp_path / "study", held={0: ("cls",), 1: ("reg",)})
    summary = write_report(root)
    cross = summary["conflict"]["fed_mtl"]["cross_task_cosine"]
    assert list(cross) == ["cls|reg"] and cross["cls|reg"]["mean"] == pytest.approx(0.4)
    assert summary["conflict"]["fed_mtl"]["task_cosine"] == {}
    report = (root / "report.md").read_text()
    assert "| arm | client-update cosine | client-update cosine cls-only vs reg-only | conflict fraction |" in report
    assert "| `fed_mtl` | +0.400 ± 0.000 | +0.400 ± 0.000 | +0.333 ± 0.000 |" in report
