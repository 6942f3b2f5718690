"""The report's expert-gate section against hand values on a fake study (fedmtl/report/gates.py)."""

from __future__ import annotations

import json

from fedmtl.report.collect import collect_study
from fedmtl.report.gates import gate_blocks
from fedmtl.report.render import Table
from tests.study._study import ROUNDS, write_study

# client -> task -> usage at every round: client 0 routes cls and reg to different experts, client 1 mixes
USAGE = {0: {"cls": [1.0, 0.0], "reg": [0.0, 1.0]}, 1: {"cls": [0.5, 0.5], "reg": [0.5, 0.5]}}


def add_gates(run_dir, seed: int) -> None:
    path = run_dir / "clients.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["gates"] = {
            task: {"usage": usage, "entropy": 0.1 * seed + 0.01 * row["round"], "uniform_entropy": 0.6931}
            for task, usage in USAGE[row["client"]].items()
        }
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_gate_tables_average_each_seeds_last_readings(tmp_path):
    root = write_study(tmp_path / "study", seeds=(0, 1, 2))
    for seed in (0, 1, 2):
        add_gates(root / "arms" / "fed_mtl" / f"seed-{seed}", seed)
    blocks = gate_blocks(collect_study(root))
    tasks, pairs = [b for b in blocks if isinstance(b, Table)]
    last = 0.01 * ROUNDS[-1]  # the entropy of the last round: seeds 0, 1, 2 add 0, 0.1, 0.2
    assert tasks.rows == [
        ["fed_mtl", "cls", f"{0.1 + last:.3f} ± 0.100", "0.693", "0.750 ± 0.000", "3"],  # top: mean (0.75, 0.25)
        ["fed_mtl", "reg", f"{0.1 + last:.3f} ± 0.100", "0.693", "0.750 ± 0.000", "3"],
    ]
    # cls x cls: clients 0 and 1, min sums 0.5; cls x reg: 0 (client 0 with itself), 0.5, 0.5, 1.0 -> 0.5
    assert pairs.rows == [
        ["fed_mtl", "cls × cls", "0.500 ± 0.000", "3"],
        ["fed_mtl", "cls × reg", "0.500 ± 0.000", "3"],
        ["fed_mtl", "reg × reg", "0.500 ± 0.000", "3"],
    ]


def test_no_gates_no_section(tmp_path):
    assert gate_blocks(collect_study(write_study(tmp_path / "study"))) == []
