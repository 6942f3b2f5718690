"""The report's expert gates (``model.sharing: {name: mmoe}``): how decisive each task's gates became and
how much two tasks route through the same experts, per arm, over seeds.

Which expert is which differs from seed to seed (each seed draws its own experts), so usage vectors are
not averaged over seeds; what is: each task's gate entropy and the share of its most used expert, and each
task pair's overlap (``fedmtl/runfiles/gates.py``: ``sum_e min(u_e, v_e)`` over pairs of clients, 1 for the
same experts, 0 for disjoint ones). A task with itself is the baseline: its holders' overlap with each
other. Tasks whose gates found them related overlap about as much as that baseline; tasks the gates
separated overlap less.
"""

from __future__ import annotations

from fedmtl.core.layout import CLIENTS_FILE
from fedmtl.report.collect import StudyData
from fedmtl.report.deltas import Spread, mean_std
from fedmtl.report.render import Block, Heading, Paragraph, Table
from fedmtl.runfiles.gates import GateReading, final_readings, per_task, task_overlaps


def arm_gate_readings(data: StudyData) -> dict[str, list[list[GateReading]]]:
    """Arm -> one list of final readings per seed, for the arms whose runs recorded gates."""
    found = {}
    for arm in data.study.arms:
        per_seed = [final_readings(r.run.dir / CLIENTS_FILE) for r in data.arm_results(arm)]
        per_seed = [readings for readings in per_seed if readings]
        if per_seed:
            found[arm] = per_seed
    return found


def spread_text(spread: Spread) -> str:
    return f"{spread.mean:.3f} ± {spread.std:.3f}"


def gate_blocks(data: StudyData) -> list[Block]:
    found = arm_gate_readings(data)
    if not found:
        return []
    task_rows, pair_rows = [], []
    for arm, per_seed in found.items():
        tasks = list(dict.fromkeys(g.task for readings in per_seed for g in per_task(readings)))
        for task in tasks:
            seeds = [g for readings in per_seed for g in per_task(readings) if g.task == task]
            task_rows.append(
                [
                    arm,
                    task,
                    spread_text(mean_std(g.entropy for g in seeds)),
                    f"{seeds[0].uniform_entropy:.3f}",
                    spread_text(mean_std(max(g.usage) for g in seeds)),
                    str(len(seeds)),
                ]
            )
        overlaps = [task_overlaps(readings) for readings in per_seed]
        pairs = list(dict.fromkeys(pair for seed in overlaps for pair in seed))
        for pair in pairs:
            values = [seed[pair] for seed in overlaps if pair in seed]
            pair_rows.append([arm, f"{pair[0]} × {pair[1]}", spread_text(mean_std(values)), str(len(values))])
    return [
        Heading("Expert gates (mixture of experts)"),
        Paragraph(
            "Each task's gate on each client, at the last round the client trained (clients.jsonl, `gates`), "
            "mean ± std over seeds. Entropy: the gate's mean entropy per example in nats (the uniform mixture "
            "it starts from beside it; 0 is one expert per example). Top expert: the usage of the task's most "
            "used expert, averaged over its clients. Overlap: Σₑ min(uₑ, vₑ) of two clients' usage vectors, "
            "averaged over client pairs, one holding each task (a task with itself: its holders' overlap with "
            "each other, the baseline). Related tasks should overlap as much as the baseline; tasks the gates "
            "separate, less."
        ),
        Table(["arm", "task", "entropy", "uniform", "top expert", "seeds"], task_rows),
        Table(["arm", "tasks", "overlap", "seeds"], pair_rows),
    ]
