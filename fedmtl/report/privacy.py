"""The privacy each arm spent (runs with client-level DP noise, ``privacy``): epsilon at the end of each
run, from its ``summary.json``, beside the study's metrics."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

from fedmtl.core.layout import SUMMARY_JSON
from fedmtl.report.analysis import Comparison
from fedmtl.report.collect import StudyData
from fedmtl.report.plots import SweepSeries
from fedmtl.report.render import Block, Heading, Paragraph, Table


def _privacy_of_runs(data: StudyData) -> Iterator[tuple[str, dict[str, Any]]]:
    """(arm, the ``privacy`` of its ``summary.json``) of every run that spent any, in seed order."""
    for (arm, _), result in sorted(data.results.items()):
        path = result.run.dir / SUMMARY_JSON
        privacy = json.loads(path.read_text()).get("privacy") if path.exists() else None
        if privacy:
            yield arm, privacy


def privacy_spent(data: StudyData) -> dict[str, list[tuple[float, float]]]:
    """Arm -> (epsilon, delta) of each of its runs that spent client-level privacy, in seed order."""
    spent: dict[str, list[tuple[float, float]]] = {}
    for arm, privacy in _privacy_of_runs(data):
        if "epsilon" in privacy:
            spent.setdefault(arm, []).append((float(privacy["epsilon"]), float(privacy["delta"])))
    return spent


def sample_level_spent(data: StudyData) -> dict[str, list[float]]:
    """Arm -> the largest per-client epsilon of sample-level DP (``privacy.sample_level``) of each run."""
    spent: dict[str, list[float]] = {}
    for arm, privacy in _privacy_of_runs(data):
        if "sample_level" in privacy:
            spent.setdefault(arm, []).append(float(privacy["sample_level"]["epsilon_max"]))
    return spent


def privacy_blocks(data: StudyData) -> list[Block]:
    """A table of the epsilon each arm spent, where any did."""
    spent = privacy_spent(data)
    inside = sample_level_spent(data)
    blocks: list[Block] = []
    if inside:
        blocks = [
            Paragraph(
                "Sample-level DP inside the clients (`privacy.sample_level`): the largest epsilon any client of a "
                "run spent, mean over seeds."
            ),
            Table(
                ["arm", "epsilon (largest client)", "runs"],
                [[a, f"{statistics.mean(e):.3g}", str(len(e))] for a, e in inside.items()],
            ),
        ]
    if not spent:
        return [Heading("Privacy spent"), *blocks] if blocks else []
    rows = []
    for arm, values in spent.items():
        epsilons = [e for e, _ in values]
        deltas = sorted({d for _, d in values})
        shown = f"{statistics.mean(epsilons):.3g}" + (
            f" (min {min(epsilons):.3g}, max {max(epsilons):.3g})" if len(set(epsilons)) > 1 else ""
        )
        rows.append([arm, shown, ", ".join(f"{d:g}" for d in deltas), str(len(values))])
    return [
        Heading("Privacy spent"),
        Paragraph(
            "The (epsilon, delta) of client-level differential privacy each arm's runs spent by their last round "
            "(`privacy`, docs/METHODS.md): mean over seeds; arms without noise are not listed."
        ),
        Table(["arm", "epsilon", "delta", "runs"], rows),
        *blocks,
        *(block for arm in spent for block in epsilon_by_round(data, arm)),
    ]


def epsilon_by_round(data: StudyData, arm: str) -> list[Block]:
    """``arm``'s epsilon after each evaluated round beside each task's headline metric there (means over seeds)."""
    results = data.arm_results(arm)
    tasks = sorted({task for result in results for task in result.curves})
    rounds = sorted({r for result in results for curve in result.curves.values() for r in curve})
    rows = []
    for r in rounds:
        spent = [s.epsilon for result in results for s in result.server if s.round == r and s.epsilon is not None]
        cells = []
        for task in tasks:
            values = [result.curves[task][r] for result in results if r in result.curves.get(task, {})]
            cells.append(f"{statistics.mean(values):.4g}" if values else "–")
        rows.append([str(r), f"{statistics.mean(spent):.3g}" if spent else ("0" if r == 0 else "–"), *cells])
    return [
        Paragraph(
            f"`{arm}`: epsilon after each evaluated round beside each task's headline metric (means over seeds)."
        ),
        Table(["round", "epsilon", *tasks], rows),
    ]


def privacy_utility_series(
    points: Sequence[tuple[StudyData, Sequence[Comparison], str]],
) -> list[SweepSeries]:
    """Per (arm, task, setting): the task's delta against a single-task arm (local training) over the mean
    epsilon the arm spent, one x per sweep point where it spent any (``delta_m`` carries the task's delta).
    A point's ``setting`` names what else the sweep varied there (``data.task_cosine=0.0``), so that
    points of different settings are not joined into one line."""
    lines: dict[str, SweepSeries] = {}
    for data, found, setting in points:
        spent = privacy_spent(data)
        for comparison in found:
            if not comparison.single_task or comparison.arm not in spent:
                continue
            epsilon = statistics.mean(e for e, _ in spent[comparison.arm])
            for task, delta in comparison.tasks.items():
                label = f"{comparison.arm} · {task}" + (f" · {setting}" if setting else "")
                line = lines.setdefault(label, SweepSeries(label, [], [], []))
                line.x.append(epsilon)
                line.delta_m.append((delta.spread.mean, delta.spread.std))
    return list(lines.values())
