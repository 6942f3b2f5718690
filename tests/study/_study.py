"""Tiny fake study directories written with exactly the layout the study runner produces."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

TASKS = [
    {"name": "cls", "metric": "accuracy", "higher_is_better": True},
    {"name": "reg", "metric": "mse", "higher_is_better": False},
]
EXAMPLES = {0: 10, 1: 30}  # client -> eval examples: client 1 weighs 3/4 of every mean
ROUNDS = (1, 2, 3)
BYTES_UP, BYTES_DOWN = 1000, 2000
BOTH_TASKS = {client: ("cls", "reg") for client in EXAMPLES}

FinalFn = Callable[[str, int, str, int], float]
"""(arm, seed, task, client) -> the client's final (last-round) headline metric."""


def default_final(arm: str, seed: int, task: str, client: int) -> float:
    """fed_mtl beats local_stl on cls and loses on reg, on every seed and client.

    Weighted finals (weights 1/4, 3/4): fed_mtl cls 0.65 + 0.01 s, local_stl cls 0.55;
    fed_mtl reg 1.25 + 0.03 s, local_stl reg 1.0.
    """
    table = {
        ("fed_mtl", "cls"): (0.8 + 0.01 * seed, 0.6 + 0.01 * seed),
        ("local_stl", "cls"): (0.4, 0.6),
        ("fed_mtl", "reg"): (2.0, 1.0 + 0.04 * seed),
        ("local_stl", "reg"): (1.0, 1.0),
    }
    return table[arm, task][client]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def metric_row(round_: int, split: str, client: int, task: str, value: float) -> dict[str, Any]:
    metric = next(t["metric"] for t in TASKS if t["name"] == task)
    row = {"round": round_, "split": split, "client": client, "task": task, "num_examples": EXAMPLES[client]}
    row.update({"loss": 0.1, "weight": 1.0, "accuracy": None, "mse": None, "r2": None})
    row[metric] = value
    if metric == "mse":
        row["r2"] = float("nan")  # what a constant-target client writes; never the headline metric
    return row


def write_run(
    run_dir: Path, arm: str, seed: int, final: FinalFn, federated: bool, held: Mapping[int, Sequence[str]] = BOTH_TASKS
) -> None:
    run_dir.mkdir(parents=True)
    rows = []
    for r in ROUNDS:
        for client in EXAMPLES:
            for task in held[client]:
                value = final(arm, seed, task, client) * r / ROUNDS[-1]  # the curve ends at the final value
                rows.append(metric_row(r, "train", client, task, 99.0))  # train rows are never read
                rows.append(metric_row(r, "eval", client, task, value))
                rows.append(metric_row(r, "personal", client, task, 42.0))
    rows.append(metric_row(ROUNDS[-1] + 1, "train", 0, "cls", 99.0))  # a later round without eval rows
    write_jsonl(run_dir / "metrics.jsonl", rows)
    cosine_rows = [
        {
            "round": r,
            "client": client,
            "task_cosines": (
                [{"tasks": ["cls", "reg"], "cosine": 0.1 * r - 0.1 * client, "angle_min": 10.0, "angle_mean": 20.0}]
                if arm.endswith("mtl") and len(held[client]) == 2
                else None
            ),
        }
        for r in ROUNDS
        for client in EXAMPLES
    ]
    write_jsonl(run_dir / "clients.jsonl", cosine_rows)
    if federated:
        server_rows = [
            {
                "round": r,
                "seconds": 0.1,
                "replies": 2,
                "failures": 0,
                "conflict_fraction": 1.0 if r == 1 else 0.0,
                "aggregate_norm": 1.0,
                "mean_norm": 1.0,
                "cosines_upper": [-0.6 + 0.5 * r],  # conflict in round 1 only
                "clients": [0, 1],
                "bytes_up": BYTES_UP,
                "bytes_down": BYTES_DOWN,
            }
            for r in ROUNDS
        ]
        write_jsonl(run_dir / "server.jsonl", server_rows)


def write_study(
    root: Path,
    arms: Sequence[str] = ("fed_mtl", "local_stl"),
    seeds: Sequence[int] = (0, 1, 2),
    final: FinalFn = default_final,
    federated: Sequence[str] = ("fed_mtl",),
    held: Mapping[int, Sequence[str]] = BOTH_TASKS,
    **manifest: Any,
) -> Path:
    """A study directory; ``manifest`` adds or replaces keys of study.json (pairs, correction, ...)."""
    runs = []
    for arm in arms:
        for seed in seeds:
            rel = f"arms/{arm}/seed-{seed}"
            write_run(root / rel, arm, seed, final, arm in federated, held)
            runs.append({"arm": arm, "seed": seed, "dir": rel, "status": "done"})
    study = {
        "name": root.name,
        "arms": list(arms),
        "seeds": list(seeds),
        "reference_arm": "fed_mtl",
        "tasks": TASKS,
        "runs": runs,
        **manifest,
    }
    (root / "study.json").write_text(json.dumps(study))
    return root
