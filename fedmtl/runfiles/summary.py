"""Per-task summary of a run: the headline metric at round 0 and at the end, over the clients holding the task."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fedmtl.data.task_kinds import TaskSpec


class EvalCurves:
    """Running example-weighted sums of each task's headline metric per (split, round).

    What the run summary needs, kept in O(splits x tasks x rounds) numbers plus the set of
    clients per task, instead of every evaluation row (evaluated clients x tasks x evaluations).
    """

    def __init__(self, specs: Sequence[TaskSpec]) -> None:
        self._headline = {spec.name: spec.kind_impl.headline_metric for spec in specs}
        self._sums: dict[tuple[str, str, int], float] = defaultdict(float)
        self._weights: dict[tuple[str, str, int], float] = defaultdict(float)
        self._clients: dict[tuple[str, str], set[int]] = defaultdict(set)

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            metric = self._headline.get(row["task"])
            if metric is None or row.get(metric) is None:
                continue
            key = (row["split"], row["task"], int(row["round"]))
            self._sums[key] += row[metric] * row["num_examples"]
            self._weights[key] += row["num_examples"]
            self._clients[row["split"], row["task"]].add(int(row["client"]))

    def curve(self, split: str, task: str) -> dict[int, float]:
        """Round -> example-weighted mean of the task's headline metric over the clients evaluated."""
        rounds = sorted(r for (s, t, r) in self._sums if s == split and t == task)
        return {
            r: self._sums[split, task, r] / self._weights[split, task, r]
            for r in rounds
            if self._weights[split, task, r] > 0
        }

    def clients(self, split: str, task: str) -> int:
        return len(self._clients.get((split, task), ()))


def task_summary(curves: EvalCurves, specs: Sequence[TaskSpec], split: str) -> list[dict[str, Any]]:
    """Per task: the headline metric at the first and last evaluation of ``split`` and its best round."""
    summary = []
    for spec in specs:
        kind = spec.kind_impl
        curve = curves.curve(split, spec.name)
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
                "clients": curves.clients(split, spec.name),
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
    return format_grid(header, lines)


def format_grid(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Cells padded to their column's width, as a markdown table."""
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), separator, *map(fmt, lines)])
