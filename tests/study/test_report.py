"""End to end: a tiny fake study -> report.md, report.html, plots, summary.json with hand-computed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmtl.study.analysis import comparisons, summarize
from fedmtl.study.collect import collect_study
from fedmtl.study.report import write_report

from ._study import BYTES_DOWN, BYTES_UP, default_final, write_study

PLOTS = ("learning_curves", "deltas", "client_cosines", "conflict_fraction", "task_cosines")


def approx_seeds(values: list[float]) -> dict[str, object]:
    return {str(seed): pytest.approx(value) for seed, value in enumerate(values)}


def test_report_files_and_hand_computed_summary(tmp_path: Path) -> None:
    root = write_study(tmp_path / "study")
    summary = write_report(root)

    for name in ("report.md", "report.html", "summary.json"):
        assert (root / name).is_file()
    for name in PLOTS:
        assert (root / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["plots"] == {name: f"plots/{name}.png" for name in PLOTS}
    assert json.loads((root / "summary.json").read_text()) == summary

    # finals: example-weighted (client 0: 10 examples, client 1: 30) at round 3
    cls_final = summary["final"]["cls"]["arms"]
    assert cls_final["fed_mtl"]["per_seed"] == approx_seeds([0.65, 0.66, 0.67])
    assert (cls_final["fed_mtl"]["mean"], cls_final["fed_mtl"]["std"]) == (pytest.approx(0.66), pytest.approx(0.01))
    assert (cls_final["local_stl"]["mean"], cls_final["local_stl"]["std"]) == (pytest.approx(0.55), 0.0)
    assert summary["final"]["reg"]["arms"]["fed_mtl"]["clients"]["1"]["mean"] == pytest.approx(1.04)

    (comparison,) = summary["comparisons"]
    assert (comparison["baseline"], comparison["single_task"]) == ("local_stl", True)
    cls, reg = comparison["tasks"]["cls"], comparison["tasks"]["reg"]
    # accuracy, higher is better: (0.65 + 0.01 s - 0.55) / 0.55
    assert cls["per_seed"] == approx_seeds([0.10 / 0.55, 0.11 / 0.55, 0.12 / 0.55])
    assert cls["delta"] == {"mean": pytest.approx(0.2), "std": pytest.approx(0.01 / 0.55), "n": 3}
    assert cls["negative_transfer"] is False
    # mse, lower is better: -(1.25 + 0.03 s - 1.0) / 1.0
    assert reg["per_seed"] == approx_seeds([-0.25, -0.28, -0.31])
    assert reg["delta"] == {"mean": pytest.approx(-0.28), "std": pytest.approx(0.03), "n": 3}
    assert reg["negative_transfer"] is True
    # 3 seeds and 2 clients: too few pairs for a Wilcoxon test
    assert reg["test"] == {"p_value": None, "unit": None, "pairs": 0}
    per_seed_delta_m = [(0.10 / 0.55 - 0.25) / 2, (0.11 / 0.55 - 0.28) / 2, (0.12 / 0.55 - 0.31) / 2]
    assert comparison["delta_m"]["per_seed"] == approx_seeds(per_seed_delta_m)
    assert comparison["delta_m"]["mean"] == pytest.approx(-0.04)
    assert comparison["delta_m"]["std"] == pytest.approx(abs(0.01 / 0.55 - 0.03) / 2)
    assert comparison["worst_task"] == {"task": "reg", "delta": reg["delta"]}
    assert comparison["negative_transfer_tasks"] == ["reg"]
    # per client: client 0 loses -(2 - 1) / 1 on reg on every seed (flagged); client 1 loses 0, 4, 8 % (noise)
    assert reg["clients"]["0"]["delta"] == {"mean": pytest.approx(-1.0), "std": 0.0, "n": 3}
    assert reg["clients"]["0"]["negative_transfer"] is True
    assert reg["clients"]["1"]["delta"]["mean"] == pytest.approx(-0.04)
    assert reg["clients"]["1"]["negative_transfer"] is False
    assert cls["clients"]["0"]["per_seed"] == approx_seeds([0.40 / 0.4, 0.41 / 0.4, 0.42 / 0.4])

    fed = summary["communication"]["fed_mtl"]
    assert (fed["bytes_up_per_round"], fed["bytes_down_per_round"]) == (BYTES_UP, BYTES_DOWN)
    assert (fed["bytes_up_total"], fed["bytes_down_total"], fed["rounds"]) == (3 * BYTES_UP, 3 * BYTES_DOWN, 3)
    assert summary["communication"]["local_stl"] is None
    assert summary["communication_saving"] is None

    markdown = (root / "report.md").read_text()
    first_table = markdown.split("\n\n")[3]
    assert markdown.index("## Per-task results") < markdown.index("## Per-client results")
    assert first_table.startswith("| task | metric | fed_mtl | local_stl | Δ vs local_stl | flag vs local_stl (p) |")
    reg_row = next(line for line in first_table.splitlines() if line.startswith("| reg "))
    assert "-28.00 ± 3.00 %" in reg_row and "**NEGATIVE TRANSFER**" in reg_row
    cls_row = next(line for line in first_table.splitlines() if line.startswith("| cls "))
    assert "+20.00 ± 1.82 %" in cls_row and "NEGATIVE" not in cls_row
    assert "| **Δm** |" in first_table and "reg: -28.00 ± 3.00 %" in first_table
    assert "## Communication cost" in markdown and "(plots/deltas.png)" in markdown

    page = (root / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert "<strong>NEGATIVE TRANSFER</strong>" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page


def test_identical_arms_never_flag_even_with_enough_seeds_for_wilcoxon(tmp_path: Path) -> None:
    def same(arm: str, seed: int, task: str, client: int) -> float:
        return default_final("fed_mtl", seed, task, client)

    seeds = range(5)
    data = collect_study(write_study(tmp_path / "s", ("fed_mtl", "local_stl", "fed_stl"), seeds, same))
    summary = summarize(data)
    assert [c["baseline"] for c in summary["comparisons"]] == ["local_stl", "fed_stl"]
    for comparison in summary["comparisons"]:
        assert comparison["negative_transfer_tasks"] == []
        assert comparison["delta_m"] == {
            "mean": 0.0,
            "std": 0.0,
            "n": 5,
            "per_seed": dict.fromkeys(map(str, seeds), 0.0),
        }
        for task in comparison["tasks"].values():
            assert task["delta"] == {"mean": 0.0, "std": 0.0, "n": 5}
            assert task["test"] == {"p_value": 1.0, "unit": "seeds", "pairs": 5}
            assert all(not c["negative_transfer"] and c["p_value"] == 1.0 for c in task["clients"].values())


def test_worse_reference_is_flagged_with_wilcoxon_over_seeds(tmp_path: Path) -> None:
    data = collect_study(write_study(tmp_path / "s", seeds=range(5)))
    (comparison,) = comparisons(data)
    assert comparison.flagged == ["reg"]
    assert comparison.tasks["reg"].test.unit == "seeds"
    assert comparison.tasks["reg"].test.p_value == pytest.approx(2 / 32)  # 5 of 5 seeds lose: exact two-sided p
    assert comparison.tasks["cls"].test.p_value == pytest.approx(2 / 32)  # 5 of 5 seeds win


def test_other_arms_and_communication_saving(tmp_path: Path) -> None:
    def finals(arm: str, seed: int, task: str, client: int) -> float:
        return default_final("fed_mtl" if arm == "fed_full" else arm, seed, task, client)

    root = write_study(tmp_path / "s", ("fed_mtl", "fed_full", "local_stl"), final=finals,
                       federated=("fed_mtl", "fed_full"))  # fmt: skip
    for seed in range(3):
        server = root / "arms" / "fed_full" / f"seed-{seed}" / "server.jsonl"
        rows = [json.loads(line) for line in server.read_text().splitlines()]
        server.write_text("".join(json.dumps({**r, "bytes_up": 4 * BYTES_UP, "bytes_down": 2 * BYTES_DOWN}) + "\n"
                                  for r in rows))  # fmt: skip
    summary = write_report(root)
    assert [(c["baseline"], c["single_task"]) for c in summary["comparisons"]] == [
        ("local_stl", True),
        ("fed_full", False),
    ]
    assert summary["comparisons"][1]["delta_m"]["mean"] == 0.0
    # encoder-only: 3000 up + 6000 down; full model: 12000 up + 12000 down
    assert summary["communication_saving"] == {
        "encoder_only_arm": "fed_mtl",
        "full_model_arm": "fed_full",
        "up": pytest.approx(0.75),
        "down": pytest.approx(0.5),
        "total": pytest.approx(1 - 9000 / 24000),
    }
    markdown = (root / "report.md").read_text()
    assert "## Reference arm against the other arms" in markdown
    assert "saves 62.5 % of the bytes" in markdown
