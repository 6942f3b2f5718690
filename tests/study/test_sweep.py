"""Sweep report: one row per point, baseline and task; Delta_m and worst task against the swept value."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedmtl.report.analysis import comparisons, headline
from fedmtl.report.collect import StudyError, collect_study
from fedmtl.report.sweep import load_sweep, sweep_series, write_sweep_report

from ._study import default_final, write_study


def neutral_reg(arm: str, seed: int, task: str, client: int) -> float:
    """Like the default study, but fed_mtl matches local_stl on reg (delta 0 there)."""
    return default_final("local_stl" if task == "reg" else arm, seed, task, client)


def write_sweep(root: Path, keys: list[str], values: list[dict[str, object]]) -> Path:
    points = []
    for index, point_values in enumerate(values):
        write_study(root / "points" / str(index), final=default_final if index == 0 else neutral_reg)
        points.append({"values": point_values, "label": f"p{index}", "study_dir": f"points/{index}"})
    (root / "sweep.json").write_text(json.dumps({"name": "sweep", "keys": keys, "points": points}))
    return root


def test_numeric_sweep_table_and_figure(tmp_path: Path) -> None:
    root = write_sweep(
        tmp_path / "sweep", ["client.local_steps"], [{"client.local_steps": 1}, {"client.local_steps": 4}]
    )
    rows = write_sweep_report(root)
    assert (root / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "(sweep.png)" in (root / "sweep.md").read_text()
    assert "**NEGATIVE TRANSFER**" in (root / "sweep.md").read_text()

    with (root / "sweep.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [(r["label"], r["client.local_steps"], r["baseline"], r["task"]) for r in table] == [
        ("p0", "1", "local_stl", "cls"),
        ("p0", "1", "local_stl", "reg"),
        ("p1", "4", "local_stl", "cls"),
        ("p1", "4", "local_stl", "reg"),
    ]
    p0_reg, p1_cls, p1_reg = rows[1], rows[2], rows[3]
    assert (p0_reg["delta_mean"], p0_reg["delta_std"]) == (pytest.approx(-0.28), pytest.approx(0.03))
    assert p0_reg["verdict"] == "worse" and table[1]["verdict"] == "worse" and table[1]["arm"] == "fed_mtl"
    assert p0_reg["delta_m_mean"] == pytest.approx(-0.04)
    assert (p0_reg["worst_task"], p0_reg["worst_delta_mean"]) == ("reg", pytest.approx(-0.28))
    # point 1: cls +20 % as before, reg exactly 0 -> Delta_m = +10 %, worst task reg at 0, nothing flagged
    assert p1_cls["delta_mean"] == pytest.approx(0.2) and p1_reg["delta_mean"] == 0.0
    assert p1_reg["delta_m_mean"] == pytest.approx(0.1)
    assert (p1_reg["worst_task"], p1_reg["worst_delta_mean"]) == ("reg", 0.0)
    assert p1_cls["verdict"] == "better" and p1_reg["verdict"] == "no difference"
    assert float(table[3]["delta_m_mean"]) == pytest.approx(0.1)


def test_categorical_sweep_draws_one_line_per_other_key_combination(tmp_path: Path) -> None:
    keys = ["server.aggregator", "client.local_steps"]
    values = [
        {"server.aggregator": "fedavg", "client.local_steps": 1},
        {"server.aggregator": "pcgrad", "client.local_steps": 1},
        {"server.aggregator": "fedavg", "client.local_steps": 2},
    ]
    root = write_sweep(tmp_path / "sweep", keys, values)
    sweep = load_sweep(root)
    results = {p.index: headline(comparisons(collect_study(p.study_dir))) for p in sweep.points}
    lines = sweep_series(sweep, results)
    assert [(line.label, line.x) for line in lines] == [
        ("client.local_steps=1 · fed_mtl vs local_stl", ["fedavg", "pcgrad"]),
        ("client.local_steps=2 · fed_mtl vs local_stl", ["fedavg"]),
    ]
    assert lines[0].delta_m[0] == (pytest.approx(-0.04), pytest.approx(abs(0.01 / 0.55 - 0.03) / 2))
    assert lines[0].worst[1] == (0.0, 0.0)
    assert len(write_sweep_report(root)) == 6
    assert (root / "sweep.png").is_file()


def test_missing_point_study_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    root.mkdir()
    points = [{"values": {"k": 1}, "label": "a", "study_dir": "points/0"}]
    (root / "sweep.json").write_text(json.dumps({"name": "s", "keys": ["k"], "points": points}))
    with pytest.raises(StudyError, match=rf"^{root / 'points' / '0' / 'study.json'}: file not found$"):
        write_sweep_report(root)
    (root / "sweep.json").write_text(
        json.dumps({"name": "s", "keys": ["k"], "points": [{"values": {}, "study_dir": "x"}]})
    )
    with pytest.raises(StudyError, match=r"points\[0\] has no value for k"):
        load_sweep(root)


def test_the_report_command_re_renders_every_points_report_and_the_sweep(tmp_path: Path) -> None:
    import simulate

    root = write_sweep(
        tmp_path / "sweep", ["client.local_steps"], [{"client.local_steps": 1}, {"client.local_steps": 4}]
    )
    assert simulate.report(str(root)) == 0
    for index in (0, 1):
        assert "## Verdict per task" in (root / "points" / str(index) / "report.md").read_text()
    assert (root / "sweep.md").is_file()


def test_the_headline_keeps_the_comparisons_against_single_task_arms_or_all_when_there_are_none():
    from types import SimpleNamespace

    from fedmtl.report.analysis import headline

    to_stl, to_fedavg, other = (SimpleNamespace(single_task=s) for s in (True, False, False))
    assert headline([to_fedavg, to_stl]) == [to_stl]
    assert headline((to_fedavg, other)) == [to_fedavg, other]
    assert headline([]) == []
