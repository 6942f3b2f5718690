"""The study summary's JSON at its edges, on the fake study of ``_study.py`` (values worked out there):
each client's own t-test in a task's entry, a comparison without a worst task, and the communication
saving when the full-model arm sent nothing."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from scipy import stats

from fedmtl.report.analysis import comparison_dict, comparisons, final_dict, summarize
from fedmtl.report.collect import StudyError, collect_study, load_study

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


def test_the_summary_names_every_field_a_reader_of_summary_json_relies_on(tmp_path: Path) -> None:
    data = collect_study(write_study(tmp_path / "s"))
    (comparison,) = comparisons(data)
    entry = comparison_dict(comparison)
    assert set(entry["clients"]["0"]) == {"tasks", "delta_m", "test", "p_adjusted", "verdict", "worst_task"}
    assert set(entry["tasks"]["reg"]["clients"]["0"]) == {"delta", "per_seed", "test", "p_adjusted", "verdict"}
    assert entry["clients"]["0"]["verdict"] in ("better", "worse", "no difference")
    finals = final_dict(data)
    assert finals["cls"]["metric"] == "accuracy" and finals["reg"]["metric"] == "mse"
    assert (finals["cls"]["higher_is_better"], finals["reg"]["higher_is_better"]) == (True, False)
    assert set(finals["cls"]["arms"]) == {"fed_mtl", "local_stl"}


def test_summary_json_opens_with_the_study_its_arms_and_its_test_settings(tmp_path: Path) -> None:
    root = write_study(tmp_path / "s", seeds=range(3))
    data = collect_study(root)
    summary = summarize(data)
    study = data.study
    assert (summary["study"], summary["reference_arm"]) == (study.name, study.reference_arm)
    assert (summary["arms"], summary["single_task_arms"]) == (["fed_mtl", "local_stl"], ["local_stl"])
    assert summary["significance"] == study.significance == 0.05
    assert summary["communication"]["fed_mtl"]["seeds"] == 3
    assert all(set(task) == {"metric", "higher_is_better", "arms"} for task in summary["final"].values())


def test_summary_json_has_exactly_its_documented_top_level_fields(tmp_path: Path) -> None:
    summary = summarize(collect_study(write_study(tmp_path / "s", seeds=range(3))))
    assert set(summary) == {
        "study", "reference_arm", "pairs", "correction", "significance", "arms", "single_task_arms", "seeds",
        "tasks", "runs_used", "runs_skipped", "flag_rule", "delta_sign", "final", "comparisons", "communication",
        "communication_saving", "conflict",
    }  # fmt: skip
    assert summary["seeds"] == [0, 1, 2] and summary["pairs"] == [["fed_mtl", "local_stl"]]
    assert summary["tasks"] == [
        {"name": "cls", "metric": "accuracy", "higher_is_better": True},
        {"name": "reg", "metric": "mse", "higher_is_better": False},
    ]
    assert summary["runs_used"][0] == {"arm": "fed_mtl", "seed": 0} and summary["runs_skipped"] == []


def test_summary_json_lists_the_runs_it_skipped_with_their_status(tmp_path: Path) -> None:
    root = write_study(tmp_path / "s", seeds=range(3))
    study = json.loads((root / "study.json").read_text())
    study["runs"][-1]["status"] = "failed"  # local_stl, seed 2
    (root / "study.json").write_text(json.dumps(study))
    summary = summarize(collect_study(root))
    assert summary["runs_skipped"] == [{"arm": "local_stl", "seed": 2, "status": "failed"}]
    assert {"arm": "local_stl", "seed": 2} not in summary["runs_used"] and len(summary["runs_used"]) == 5


def test_per_client_deltas_are_absolute_for_a_task_marked_so_and_tested_over_the_seeds(tmp_path: Path) -> None:
    from fedmtl.report.analysis import compare_clients
    from fedmtl.report.collect import StudyData, Task

    data = collect_study(write_study(tmp_path / "s"))
    absolute = (Task("cls", "accuracy", True, relative=False),)  # as calibration's ECE is compared
    data = StudyData(replace(data.study, tasks=absolute), data.results, data.skipped)
    clients = compare_clients(data, "fed_mtl", "local_stl", "cls")
    # client 0: fed_mtl 0.8 + 0.01 s against local_stl 0.4 (default_final): absolute 0.4 + 0.01 s
    assert clients[0].client == 0 and clients[0].per_seed == pytest.approx({0: 0.40, 1: 0.41, 2: 0.42})
    assert (clients[0].test.unit, clients[0].test.pairs) == ("seeds", 3)


def test_per_client_deltas_use_only_the_seeds_both_arms_finished(tmp_path: Path) -> None:
    from fedmtl.report.analysis import compare_clients

    root = write_study(tmp_path / "s", seeds=range(3))
    study = json.loads((root / "study.json").read_text())
    study["runs"][-1]["status"] = "failed"  # local_stl, seed 2
    (root / "study.json").write_text(json.dumps(study))
    clients = compare_clients(collect_study(root), "fed_mtl", "local_stl", "reg")
    assert sorted(clients[1].per_seed) == [0, 1]


def test_a_comparison_names_its_tasks_and_tests_delta_m_and_each_clients_over_the_seeds(tmp_path: Path) -> None:
    (comparison,) = comparisons(collect_study(write_study(tmp_path / "s")))
    assert [t.task for t in comparison.tasks.values()] == ["cls", "reg"]
    assert comparison.delta_m_test.unit == "seeds"
    client_0 = comparison.clients[0]  # +100 % + 2.5 % s on cls, -100 % on reg: Delta_m 0, 0.0125, 0.025
    assert client_0.test.unit == "seeds" and client_0.test.pairs == 3
    p = float(stats.ttest_1samp([0.0, 0.0125, 0.025], 0.0).pvalue)
    assert client_0.verdict == ("better" if min(1.0, 2 * p) < 0.05 else "no difference")


def test_an_arm_without_any_finished_run_is_left_out_of_the_comparisons(tmp_path: Path) -> None:
    root = write_study(tmp_path / "s", seeds=range(3))
    study = json.loads((root / "study.json").read_text())
    for run in study["runs"]:
        run["status"] = "failed" if run["arm"] == "local_stl" else run["status"]
    (root / "study.json").write_text(json.dumps(study))
    assert comparisons(collect_study(root)) == []


def test_absolute_paired_deltas_keep_the_sign_when_higher_is_better_and_flip_it_otherwise() -> None:
    from fedmtl.report.deltas import paired_deltas

    assert paired_deltas({0: 0.5}, {0: 0.25}, True, relative=False) == {0: 0.25}
    assert paired_deltas({0: 0.5}, {0: 0.25}, False, relative=False) == {0: -0.25}


def test_a_study_where_no_task_has_a_finite_delta_names_no_worst_task(tmp_path: Path) -> None:
    # every baseline final is 0: every relative delta is NaN (a zero baseline gives none)
    def finals(arm: str, seed: int, task: str, client: int) -> float:
        return 0.0 if arm == "local_stl" else default_final(arm, seed, task, client)

    (comparison,) = comparisons(collect_study(write_study(tmp_path / "s", final=finals)))
    assert comparison.worst_task is None and comparison.delta_m.n == 0
    assert [c.worst_task for c in comparison.clients.values()] == [None, None]


def test_a_study_file_without_tasks_is_rejected(tmp_path: Path) -> None:
    root = write_study(tmp_path / "s")
    study = json.loads((root / "study.json").read_text())
    (root / "study.json").write_text(json.dumps({**study, "tasks": []}))
    with pytest.raises(StudyError, match=r"study.json: 'tasks' names no task$"):
        load_study(root)
