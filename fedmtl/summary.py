"""Per-task summary of a run: the headline metric at round 0 and at the end, over the clients holding the task."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fedmtl.task_kinds import TaskSpec


def weighted_by_round(rows: Iterable[Mapping[str, Any]], task: str, metric: str) -> dict[int, float]:
    """Example-weighted mean of ``metric`` over clients, per round, for one task's eval rows."""
    sums: dict[int, float] = defaultdict(float)
    weights: dict[int, float] = defaultdict(float)
    for row in rows:
        if row["task"] == task and row.get(metric) is not None:
            sums[row["round"]] += row[metric] * row["num_examples"]
            weights[row["round"]] += row["num_examples"]
    return {r: sums[r] / weights[r] for r in sorted(sums) if weights[r] > 0}


def task_summary(eval_rows: Sequence[Mapping[str, Any]], specs: Sequence[TaskSpec]) -> list[dict[str, Any]]:
    summary = []
    for spec in specs:
        kind = spec.kind_impl
        curve = weighted_by_round(eval_rows, spec.name, kind.headline_metric)
        if not curve:
            continue
        first_round, last_round = min(curve), max(curve)
        start, final = curve[first_round], curve[last_round]
        best_round = (max if kind.higher_is_better else min)(curve, key=curve.__getitem__)
        summary.append(
            {
                "task": spec.name,
                "kind": spec.kind,
                "metric": kind.headline_metric,
                "higher_is_better": kind.higher_is_better,
                "clients": len({row["client"] for row in eval_rows if row["task"] == spec.name}),
                "round_first": first_round,
                "value_first": start,
                "round_final": last_round,
                "value_final": final,
                "best_round": best_round,
                "value_best": curve[best_round],
                "improved": (final > start) if kind.higher_is_better else (final < start),
                "curve": {str(r): v for r, v in curve.items()},
            }
        )
    return summary


def format_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table for the terminal (and the markdown summary)."""
    header = ("task", "kind", "clients", "metric", "round 0", "final", "best (round)")
    lines = [
        (
            s["task"],
            s["kind"],
            str(s["clients"]),
            f"{s['metric']} ({'higher' if s['higher_is_better'] else 'lower'} is better)",
            f"{s['value_first']:.4f}",
            f"{s['value_final']:.4f}",
            f"{s['value_best']:.4f} ({s['best_round']})",
        )
        for s in summary
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), separator, *map(fmt, lines)])
