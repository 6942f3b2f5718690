"""Reading a study directory: final metrics by the contract's rule, matrices, bytes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmtl.report.collect import StudyError, collect_study, cosine_matrix, load_study

from ._study import BYTES_DOWN, BYTES_UP, ROUNDS, metric_row, write_jsonl, write_study


def test_final_metric_is_the_example_weighted_eval_value_at_the_last_round(tmp_path: Path) -> None:
    data = collect_study(write_study(tmp_path / "study"))
    assert data.final("fed_mtl", "cls") == {0: pytest.approx(0.65), 1: pytest.approx(0.66), 2: pytest.approx(0.67)}
    assert data.final("local_stl", "reg") == {0: pytest.approx(1.0), 1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    assert data.final_by_client("fed_mtl", "reg")[2] == {0: pytest.approx(2.0), 1: pytest.approx(1.08)}
    curve = data.curves("fed_mtl", "cls")[0]
    assert sorted(curve) == list(ROUNDS) and curve[1] == pytest.approx(0.65 / 3)
    assert data.clients("cls") == [0, 1]


def test_each_task_ends_at_its_own_last_eval_round(tmp_path: Path) -> None:
    run = tmp_path / "s" / "arms" / "fed_mtl" / "seed-0"
    run.mkdir(parents=True)
    rows = [metric_row(1, "eval", 0, "cls", 0.5), metric_row(1, "eval", 0, "reg", 3.0),
            metric_row(2, "eval", 0, "cls", 0.7), metric_row(2, "eval", 1, "cls", 0.9)]  # fmt: skip
    write_jsonl(run / "metrics.jsonl", rows)
    study = {"name": "s", "arms": ["fed_mtl"], "seeds": [0], "reference_arm": "fed_mtl",
             "tasks": [{"name": "cls", "metric": "accuracy", "higher_is_better": True},
                       {"name": "reg", "metric": "mse", "higher_is_better": False}],
             "runs": [{"arm": "fed_mtl", "seed": 0, "dir": "arms/fed_mtl/seed-0", "status": "done"}]}  # fmt: skip
    (tmp_path / "s" / "study.json").write_text(json.dumps(study))
    data = collect_study(tmp_path / "s")
    assert data.final("fed_mtl", "reg") == {0: 3.0}
    assert data.final("fed_mtl", "cls") == {0: pytest.approx((10 * 0.7 + 30 * 0.9) / 40)}
    assert data.communication("fed_mtl") is None  # no server.jsonl


def test_server_rows_give_matrices_conflicts_and_bytes(tmp_path: Path) -> None:
    data = collect_study(write_study(tmp_path / "study"))
    rounds = data.results["fed_mtl", 0].server
    assert [r.conflict_fraction for r in rounds] == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(rounds[0].cosines, [[1.0, -0.1], [-0.1, 1.0]])
    np.testing.assert_allclose(rounds[2].cosines, [[1.0, 0.9], [0.9, 1.0]])
    cost = data.communication("fed_mtl")
    assert (cost.bytes_up_per_round, cost.bytes_down_per_round) == (BYTES_UP, BYTES_DOWN)
    assert (cost.bytes_up_total, cost.bytes_down_total, cost.rounds) == (3 * BYTES_UP, 3 * BYTES_DOWN, 3)
    assert data.communication("local_stl") is None
    assert {c.tasks for c in data.results["fed_mtl", 1].task_cosines} == {("cls", "reg")}
    assert data.results["local_stl", 1].task_cosines == ()


def test_cosine_matrix_from_upper_triangle() -> None:
    matrix = cosine_matrix(Path("server.jsonl"), 1, [0.1, 0.2, 0.3], [4, 7, 9])
    np.testing.assert_allclose(matrix, [[1, 0.1, 0.2], [0.1, 1, 0.3], [0.2, 0.3, 1]])
    with pytest.raises(StudyError, match=r"server.jsonl: round 1: 2 cosines"):
        cosine_matrix(Path("server.jsonl"), 1, [0.1, 0.2], [4, 7, 9])


def test_missing_study_file(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=rf"^{tmp_path / 'study.json'}: file not found$"):
        load_study(tmp_path)


def test_missing_metrics_file_names_the_file(tmp_path: Path) -> None:
    root = write_study(tmp_path / "study")
    missing = root / "arms" / "local_stl" / "seed-1" / "metrics.jsonl"
    missing.unlink()
    with pytest.raises(StudyError) as info:
        collect_study(root)
    assert str(info.value) == f"{missing}: file not found"
    assert "\n" not in str(info.value)


def test_corrupt_line_and_bad_study_json(tmp_path: Path) -> None:
    root = write_study(tmp_path / "study")
    server = root / "arms" / "fed_mtl" / "seed-0" / "server.jsonl"
    server.write_text(server.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(StudyError, match=r"server.jsonl: line 2: not valid JSON"):
        collect_study(root)
    study = json.loads((root / "study.json").read_text())
    (root / "study.json").write_text(json.dumps({**study, "reference_arm": "fed_full"}))
    with pytest.raises(StudyError, match="reference_arm 'fed_full' is not one of the arms"):
        load_study(root)


def test_runs_not_done_are_skipped(tmp_path: Path) -> None:
    root = write_study(tmp_path / "study")
    study = json.loads((root / "study.json").read_text())
    study["runs"].append({"arm": "local_stl", "seed": 9, "dir": "arms/local_stl/seed-9", "status": "failed"})
    (root / "study.json").write_text(json.dumps(study))
    data = collect_study(root)
    assert [(r.arm, r.seed, r.status) for r in data.skipped] == [("local_stl", 9, "failed")]
    assert len(data.results) == 6
