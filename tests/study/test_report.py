"""End to end: a tiny fake study -> report.md, report.html, plots, summary.json with hand-computed numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from fedmtl.report.analysis import comparisons, summarize
from fedmtl.report.collect import collect_study
from fedmtl.report.report import write_report

from ._study import BYTES_DOWN, BYTES_UP, default_final, write_study

PLOTS = ("forest", "learning_curves", "client_cosines", "conflict_fraction", "task_cosines")


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
    assert (comparison["arm"], comparison["baseline"], comparison["single_task"]) == ("fed_mtl", "local_stl", True)
    cls, reg = comparison["tasks"]["cls"], comparison["tasks"]["reg"]
    # accuracy, higher is better: (0.65 + 0.01 s - 0.55) / 0.55
    cls_seeds = [0.10 / 0.55, 0.11 / 0.55, 0.12 / 0.55]
    assert cls["per_seed"] == approx_seeds(cls_seeds)
    assert cls["delta"] == {"mean": pytest.approx(0.2), "std": pytest.approx(0.01 / 0.55), "n": 3}
    # mse, lower is better: -(1.25 + 0.03 s - 1.0) / 1.0
    reg_seeds = [-0.25, -0.28, -0.31]
    assert reg["per_seed"] == approx_seeds(reg_seeds)
    assert reg["delta"] == {"mean": pytest.approx(-0.28), "std": pytest.approx(0.03), "n": 3}
    # one test: the paired t-test over the 3 seeds, Holm-adjusted over the 2 tasks
    p_cls, p_reg = (float(stats.ttest_1samp(x, 0.0).pvalue) for x in (cls_seeds, reg_seeds))
    assert p_cls < p_reg
    assert reg["test"]["test"] == "paired t-test" and reg["test"]["unit"] == "seeds" and reg["test"]["pairs"] == 3
    assert (cls["test"]["p_value"], reg["test"]["p_value"]) == (pytest.approx(p_cls), pytest.approx(p_reg))
    assert cls["p_adjusted"] == pytest.approx(2 * p_cls)
    assert reg["p_adjusted"] == pytest.approx(max(2 * p_cls, p_reg))
    half = 4.302652729911275 * 0.03 / math.sqrt(3)  # t_{0.975, 2}
    assert reg["test"]["ci"] == [pytest.approx(-0.28 - half), pytest.approx(-0.28 + half)]
    assert (cls["verdict"], reg["verdict"]) == ("better", "worse")
    per_seed_delta_m = [(0.10 / 0.55 - 0.25) / 2, (0.11 / 0.55 - 0.28) / 2, (0.12 / 0.55 - 0.31) / 2]
    assert comparison["delta_m"]["per_seed"] == approx_seeds(per_seed_delta_m)
    assert comparison["delta_m"]["mean"] == pytest.approx(-0.04)
    assert comparison["delta_m"]["std"] == pytest.approx(abs(0.01 / 0.55 - 0.03) / 2)
    assert comparison["delta_m"]["test"]["p_value"] == pytest.approx(
        float(stats.ttest_1samp(per_seed_delta_m, 0).pvalue)
    )
    assert comparison["worst_task"] == {"task": "reg", "delta": reg["delta"]}
    assert comparison["worse_tasks"] == ["reg"]
    # per client: client 0 loses -(2 - 1) / 1 on reg on every seed (p = 0: flagged even after Holm over 2 clients);
    # client 1 loses 0, 4, 8 % (noise)
    assert reg["clients"]["0"]["delta"] == {"mean": pytest.approx(-1.0), "std": 0.0, "n": 3}
    assert (reg["clients"]["0"]["p_adjusted"], reg["clients"]["0"]["verdict"]) == (0.0, "worse")
    p_client = float(stats.ttest_1samp([0.0, -0.04, -0.08], 0.0).pvalue)
    assert reg["clients"]["1"]["delta"]["mean"] == pytest.approx(-0.04)
    assert reg["clients"]["1"]["p_adjusted"] == pytest.approx(p_client)  # Holm: max(2 * 0, 1 * p)
    assert reg["clients"]["1"]["verdict"] == "no difference"
    assert cls["clients"]["0"]["per_seed"] == approx_seeds([0.40 / 0.4, 0.41 / 0.4, 0.42 / 0.4])
    # per client, over the tasks it holds: client 0 (+100 % + 2.5 % s on cls, -100 % on reg), client 1
    client_0, client_1 = comparison["clients"]["0"], comparison["clients"]["1"]
    assert client_0["tasks"] == ["cls", "reg"] and client_0["worst_task"] == "reg"
    assert client_0["delta_m"]["per_seed"] == approx_seeds([0.0, 0.0125, 0.025])
    assert client_1["delta_m"]["per_seed"] == approx_seeds([0.0, (0.01 / 0.6 - 0.04) / 2, (0.02 / 0.6 - 0.08) / 2])
    p_clients = [float(stats.ttest_1samp(x, 0).pvalue) for x in ([0.0, 0.0125, 0.025], [0.0, -0.0117, -0.0233])]
    assert client_0["p_adjusted"] == pytest.approx(min(1.0, 2 * min(p_clients)), rel=1e-2)
    assert summary["correction"] == "holm" and "Holm" in summary["flag_rule"]
    assert "higher is better" in summary["delta_sign"] and "Nash-MTL" in summary["delta_sign"]

    fed = summary["communication"]["fed_mtl"]
    assert (fed["bytes_up_per_round"], fed["bytes_down_per_round"]) == (BYTES_UP, BYTES_DOWN)
    assert (fed["bytes_up_total"], fed["bytes_down_total"], fed["rounds"]) == (3 * BYTES_UP, 3 * BYTES_DOWN, 3)
    assert summary["communication"]["local_stl"] is None
    assert summary["communication_saving"] is None

    markdown = (root / "report.md").read_text()
    blocks = markdown.split("\n\n")
    assert blocks[2].startswith("![") and "(plots/forest.png)" in blocks[2]  # the headline figure comes first
    assert markdown.index("(plots/forest.png)") < markdown.index("| arm vs baseline |")
    assert (
        markdown.index("## Paired comparisons")
        < markdown.index("## Final metrics")
        < markdown.index("## Per-client results")
    )
    table = next(block for block in blocks if block.startswith("| arm vs baseline |"))
    reg_row = next(line for line in table.splitlines() if line.startswith("| fed_mtl vs local_stl | reg "))
    assert "-28.00 ± 3.00 %" in reg_row and "**NEGATIVE TRANSFER**" in reg_row
    assert f"p={p_reg:.3g}, adj. {max(2 * p_cls, p_reg):.3g} (3 seeds)" in reg_row
    cls_row = next(line for line in table.splitlines() if line.startswith("| fed_mtl vs local_stl | cls "))
    assert "+20.00 ± 1.82 %" in cls_row and "NEGATIVE" not in cls_row and "better" in cls_row
    assert "| Δm (mean over tasks) |" in table and "reg: -28.00 ± 3.00 %" in table
    assert "## Communication cost" in markdown

    page = (root / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert page.index("<img") < page.index("<table")
    assert "<strong>NEGATIVE TRANSFER</strong>" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page


def test_identical_arms_never_flag(tmp_path: Path) -> None:
    def same(arm: str, seed: int, task: str, client: int) -> float:
        return default_final("fed_mtl", seed, task, client)

    seeds = range(5)
    data = collect_study(write_study(tmp_path / "s", ("fed_mtl", "local_stl", "fed_stl"), seeds, same))
    summary = summarize(data)
    assert [c["baseline"] for c in summary["comparisons"]] == ["local_stl", "fed_stl"]
    for comparison in summary["comparisons"]:
        assert comparison["worse_tasks"] == []
        assert {k: comparison["delta_m"][k] for k in ("mean", "std", "n", "per_seed")} == {
            "mean": 0.0,
            "std": 0.0,
            "n": 5,
            "per_seed": dict.fromkeys(map(str, seeds), 0.0),
        }
        for task in comparison["tasks"].values():
            assert task["delta"] == {"mean": 0.0, "std": 0.0, "n": 5}
            assert (task["test"]["p_value"], task["test"]["unit"], task["test"]["pairs"]) == (1.0, "seeds", 5)
            assert task["verdict"] == "no difference"
            assert all(c["verdict"] == "no difference" for c in task["clients"].values())


def test_worse_arm_is_flagged_by_the_t_test_over_seeds(tmp_path: Path) -> None:
    data = collect_study(write_study(tmp_path / "s", seeds=range(5)))
    (comparison,) = comparisons(data)
    assert comparison.flagged == ["reg"]
    assert comparison.tasks["reg"].test.unit == "seeds"
    reg = [-(1.25 + 0.03 * s - 1.0) for s in range(5)]
    assert comparison.tasks["reg"].test.p_value == pytest.approx(float(stats.ttest_1samp(reg, 0.0).pvalue))
    assert comparison.tasks["cls"].verdict == "better"


def test_one_seed_tests_over_clients(tmp_path: Path) -> None:
    data = collect_study(write_study(tmp_path / "s", seeds=(0,)))
    (comparison,) = comparisons(data)
    reg = comparison.tasks["reg"]
    assert reg.test.unit == "clients" and reg.test.pairs == 2
    assert all(client.test.unit is None and client.verdict is None for client in reg.clients.values())


def test_pairs_and_correction_come_from_the_study(tmp_path: Path) -> None:
    def finals(arm: str, seed: int, task: str, client: int) -> float:
        return default_final("fed_mtl" if arm == "pcgrad" else arm, seed, task, client) * (
            1.1 if arm == "pcgrad" else 1
        )

    arms = ("fed_mtl", "pcgrad", "local_stl")
    pairs = [["pcgrad", "fed_mtl"], ["pcgrad", "local_stl"], ["fed_mtl", "local_stl"]]
    root = write_study(tmp_path / "s", arms, range(4), finals, pairs=pairs, correction="bh")
    data = collect_study(root)
    found = comparisons(data)
    assert [(c.arm, c.baseline) for c in found] == [tuple(pair) for pair in pairs]
    assert [c.single_task for c in found] == [False, True, True]
    tests = [found[2].tasks[t].test.p_value for t in ("cls", "reg")]
    assert [found[2].tasks[t].p_adjusted for t in ("cls", "reg")] == [
        pytest.approx(x) for x in stats.false_discovery_control(tests, method="bh")
    ]
    # pcgrad = 1.1 x fed_mtl on every client: +10 % accuracy (better), +10 % mse (worse), identically on every seed
    assert found[0].tasks["cls"].verdict == "better" and found[0].tasks["reg"].verdict == "worse"
    summary = write_report(root)
    assert summary["pairs"] == pairs and "Benjamini-Hochberg" in summary["flag_rule"]
    markdown = (root / "report.md").read_text()
    assert "| pcgrad vs fed_mtl | reg |" in markdown and "**WORSE**" in markdown


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
    assert "| fed_mtl vs fed_full |" in markdown
    assert "saves 62.5 % of the bytes" in markdown


def test_the_report_shows_what_each_arm_changes_and_the_injected_data_issues(tmp_path):
    import json

    import yaml

    from fedmtl.report.report import write_report
    from tests.study._study import write_study

    root = write_study(tmp_path / "s")
    manifest = json.loads((root / "study.json").read_text())
    manifest["arm_specs"] = {
        "fed_mtl": {"base": "fed_mtl", "set": {"model.joint_heads": [["cls", "reg"]]}},
        "local_stl": {"base": "local_stl", "set": {}, "pretrain": {"tasks": ["cls"], "rounds": 2}},
    }
    (root / "study.json").write_text(json.dumps(manifest))
    issue = {"name": "leakage", "task": "reg", "clients": [1], "source": "cls", "strength": 2.0, "to": None}
    (root / "config.yaml").write_text(yaml.safe_dump({"data_issues": [issue]}))
    write_report(root)
    text = (root / "report.md").read_text()
    assert text.index("## Setup") < text.index("## Paired comparisons")
    assert '| `fed_mtl` | `fed_mtl` | `model.joint_heads: [["cls", "reg"]]` | - |' in text
    assert "| `local_stl` | `local_stl` | - | 2 rounds on cls |" in text
    assert '| leakage | reg | 1 | `source: "cls"`; `strength: 2.0` |' in text
    plain = write_study(tmp_path / "plain")  # a study.json without arm specs, no config: no setup section
    write_report(plain)
    assert "## Setup" not in (plain / "report.md").read_text()
