"""The study summary's JSON at its edges, on the fake study of ``_study.py`` (values worked out there):
each client's own t-test in a task's entry, a comparison without a worst task, and the communication
saving when the full-model arm sent nothing."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from scipy import stats

from fedmtl.report.analysis import comparison_dict, comparisons, summarize
from fedmtl.report.collect import collect_study

from ._study import default_final, write_study


def test_each_clients_entry_carries_its_own_t_test_over_seeds(tmp_path: Path) -> None:
    (comparison,) = comparisons(collect_study(write_study(tmp_path / "s")))
    clients = comparison_dict(comparison)["tasks"]["reg"]["clients"]
    # client 1 loses 0, 4 and 8 % on reg over seeds 0-2 (default_final); client 0 100 % on every seed
    assert clients["1"]["test"]["p_value"] == float(stats.ttest_1samp([0.0, -0.04, -0.08], 0.0).pvalue)
    assert (clients["0"]["test"]["p_value"], clients["0"]["test"]["pairs"]) == (0.0, 3)


def test_a_comparison_without_a_worst_task_says_none(tmp_path: Path) -> None:
    (comparison,) = comparisons(collect_study(write_study(tmp_path / "s")))
    assert comparison_dict(replace(comparison, worst_task=None))["worst_task"] is None


def test_the_communication_saving_over_a_full_model_arm_that_sent_nothing_is_not_a_number(tmp_path: Path) -> None:
    def finals(arm: str, seed: int, task: str, client: int) -> float:
        return default_final("fed_mtl" if arm == "fed_full" else arm, seed, task, client)

    arms = ("fed_mtl", "fed_full", "local_stl")
    root = write_study(tmp_path / "s", arms, final=finals, federated=("fed_mtl", "fed_full"))
    for seed in range(3):
        server = root / "arms" / "fed_full" / f"seed-{seed}" / "server.jsonl"
        rows = [json.loads(line) for line in server.read_text().splitlines()]
        server.write_text("".join(json.dumps({**r, "bytes_up": 0, "bytes_down": 0}) + "\n" for r in rows))
    saving = summarize(collect_study(root))["communication_saving"]
    assert all(math.isnan(saving[k]) for k in ("up", "down", "total"))
