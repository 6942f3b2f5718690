"""The report's verdict per task, grouping, roll-back and affinity sections (``fedmtl/report/adaptive.py``),
on fake study directories with known outcomes (``tests/study/_study.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmtl.report.adaptive import (
    INCONCLUSIVE,
    KEEP,
    ROLL_BACK,
    affinity_means,
    affinity_rows,
    grouping_rows,
    rollback_rows,
    task_verdict,
)
from fedmtl.report.analysis import comparisons
from fedmtl.report.collect import collect_study
from fedmtl.report.report import write_report
from tests.study._study import write_jsonl, write_study

ONE_TASK_EACH = {0: ("cls",), 1: ("reg",)}


def add_rows(path: Path, extra: list[dict]) -> None:
    """Merge ``extra`` into the rows of a run's server.jsonl (by position)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    write_jsonl(path, [{**row, **more} for row, more in zip(rows, extra)])


def test_verdicts_follow_the_paired_tests(tmp_path):
    """fed_mtl beats local_stl on cls on every seed and loses on reg (the fake study's design)."""
    data = collect_study(write_study(tmp_path / "s", seeds=range(5)))
    (comparison,) = comparisons(data)
    assert task_verdict(comparison.tasks["cls"]) == KEEP
    assert task_verdict(comparison.tasks["reg"]) == ROLL_BACK
    same = collect_study(write_study(tmp_path / "same", seeds=range(5), final=lambda a, s, t, c: 1.0 + 0.01 * s))
    (comparison,) = comparisons(same)
    assert {task_verdict(d) for d in comparison.tasks.values()} == {INCONCLUSIVE}


def test_a_gain_that_one_client_pays_for_is_inconclusive(tmp_path):
    """cls: client 1 (weight 3/4) gains a lot, client 0 loses on every seed: the task is better on
    average, but its worst client shows negative transfer."""

    def final(arm, seed, task, client):
        if task == "reg":
            return 1.0
        if arm == "local_stl":
            return 0.5
        return (0.4 - 0.001 * seed) if client == 0 else (0.9 + 0.01 * seed)

    data = collect_study(write_study(tmp_path / "s", seeds=range(6), final=final))
    (comparison,) = comparisons(data)
    cls = comparison.tasks["cls"]
    assert cls.verdict == "better" and cls.clients[0].verdict == "worse"
    assert task_verdict(cls) == INCONCLUSIVE


def test_grouping_rows_score_the_final_groups_against_the_task_split(tmp_path):
    root = write_study(tmp_path / "s", seeds=(0, 1), held=ONE_TASK_EACH)
    split = {"groups": {"all.0": [0], "all.1": [1]}, "splits": [{"group": "all", "into": {}}]}
    together = {"groups": {"all": [0, 1]}, "splits": []}
    add_rows(root / "arms/fed_mtl/seed-0/server.jsonl", [together, split, {"groups": split["groups"]}])
    add_rows(root / "arms/fed_mtl/seed-1/server.jsonl", [together, together, together])
    (row,) = grouping_rows(collect_study(root))
    # seed 0: two groups, ARI 1 (the task split exactly); seed 1: one group, ARI 0
    assert row == ["fed_mtl", "1.50 ± 0.71", "0.50 ± 0.71", "2.0 (1/2 seeds split)"]
    summary = write_report(root)
    assert summary["plots"]["grouping"] == "plots/grouping.png" and (root / "plots/grouping.png").stat().st_size > 0


def test_rollback_rows_count_the_last_rounds_choices(tmp_path):
    root = write_study(tmp_path / "s", seeds=(0,))
    rows = [
        {"round": 1, "client": 0, "task": "cls", "choice": "local"},
        {"round": 3, "client": 0, "task": "cls", "choice": "federated"},
        {"round": 3, "client": 1, "task": "cls", "choice": "local"},
        {"round": 3, "client": 0, "task": "reg", "choice": "mix"},
    ]
    write_jsonl(root / "arms/fed_mtl/seed-0/rollback.jsonl", rows)
    assert rollback_rows(collect_study(root)) == [
        ["fed_mtl", "cls", "50 %", "50 %", "0 %", "2"],
        ["fed_mtl", "reg", "0 %", "0 %", "100 %", "1"],
    ]


def test_the_report_carries_the_verdicts_and_answers(tmp_path):
    root = write_study(tmp_path / "s", seeds=range(5))
    write_report(root)
    text = (root / "report.md").read_text()
    assert "## Verdict per task" in text
    assert "| fed_mtl vs local_stl | cls | **keep federated multi-task** |" in text
    assert "| fed_mtl vs local_stl | reg | **roll back to single-task** |" in text
    assert "**How negative transfer was detected.** fed_mtl on reg:" in text
    assert "Groups of clients" not in text  # nothing grouped


def test_task_affinity_is_averaged_over_rounds_and_seeds_and_drawn(tmp_path):
    root = write_study(tmp_path / "s", seeds=(0, 1))
    for seed, value in ((0, 0.1), (1, 0.3)):
        pairs = [{"from": "cls", "to": "reg", "affinity": value}, {"from": "cls", "to": "cls", "affinity": 0.5}]
        add_rows(root / f"arms/fed_mtl/seed-{seed}/server.jsonl", [{"task_affinity": pairs}] * 3)
    data = collect_study(root)
    assert affinity_rows(data) == [["fed_mtl", "cls", "cls", "+0.5000", "6"], ["fed_mtl", "cls", "reg", "+0.2000", "6"]]
    summary = write_report(root)
    assert summary["plots"]["task_affinity"] == "plots/task_affinity.png"
    assert (root / "plots/task_affinity.png").stat().st_size > 0


def test_client_affinity_is_averaged_over_probed_rounds_and_seeds_and_drawn(tmp_path):
    root = write_study(tmp_path / "s", seeds=(0, 1))
    for seed, value in ((0, -0.1), (1, 0.3)):
        pairs = [{"from": 0, "to": 1, "affinity": value}, {"from": 1, "to": 1, "affinity": 0.4}]
        add_rows(root / f"arms/fed_mtl/seed-{seed}/server.jsonl", [{"client_affinity": pairs}, {}, {}])
    means = affinity_means(collect_study(root), "client_affinity")
    assert means == {"fed_mtl": {(0, 1): (pytest.approx(0.1), 2), (1, 1): (pytest.approx(0.4), 2)}}
    summary = write_report(root)
    assert summary["plots"]["client_affinity"] == "plots/client_affinity.png"
    assert (root / "plots/client_affinity.png").stat().st_size > 0
    assert "client_affinity" not in write_report(write_study(tmp_path / "plain", seeds=(0,)))["plots"]
