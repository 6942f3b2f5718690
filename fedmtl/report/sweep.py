"""``write_sweep_report(sweep_dir)``: one table and one figure over the points of a config sweep.

Layout::

    <sweep>/sweep.json   {"name", "keys": [config key paths], "points": [{"values": {key: value}, "label", "study_dir"}]}
    <sweep>/points/<i>/  a study directory (see :mod:`fedmtl.report.collect`)

Per point and per compared pair (those against single-task arms, or every pair when the study has
none) the table holds each task's relative delta, Delta_m and the worst task (Maninis et al.,
CVPR 2019), mean ± std over seeds, and the verdict of the paired test (fedmtl.report.deltas).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmtl.core.layout import SWEEP_CSV, SWEEP_FILE, SWEEP_MD, SWEEP_PNG
from fedmtl.report.analysis import Comparison, comparisons, headline
from fedmtl.report.collect import StudyData, StudyError, collect_study, read_json
from fedmtl.report.conflict import (
    COLUMNS_EXPLAINED,
    ConflictSummary,
    conflict_columns,
    cosine_columns,
    summarize_conflict,
)
from fedmtl.report.plots import ConflictSeries, SweepSeries, plot_privacy_utility, plot_sweep, plot_sweep_conflict
from fedmtl.report.privacy import privacy_utility_series
from fedmtl.report.render import Block, Heading, Image, Paragraph, Table, to_markdown
from fedmtl.report.report import NOT_AVAILABLE, format_cosine, format_delta, format_test, format_verdict

SWEEP_CONFLICT_PNG = "sweep_conflict.png"
PRIVACY_UTILITY_PNG = "privacy_utility.png"


@dataclass(frozen=True)
class SweepPoint:
    index: int
    values: dict[str, Any]
    label: str
    study_dir: Path


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    keys: tuple[str, ...]
    points: tuple[SweepPoint, ...]


def load_sweep(sweep_dir: str | Path) -> Sweep:
    root = Path(sweep_dir)
    path = root / SWEEP_FILE
    payload = read_json(path)
    if not isinstance(payload, dict) or not isinstance(payload.get("keys"), list) or not payload["keys"]:
        raise StudyError(path, "expected an object with a non-empty 'keys' list")
    if not isinstance(payload.get("points"), list):
        raise StudyError(path, "expected a 'points' list")
    keys = tuple(str(k) for k in payload["keys"])
    points = []
    for index, entry in enumerate(payload["points"]):
        if not isinstance(entry, dict) or "study_dir" not in entry or not isinstance(entry.get("values"), dict):
            raise StudyError(path, f"points[{index}] needs 'values' (an object) and 'study_dir'")
        missing = [key for key in keys if key not in entry["values"]]
        if missing:
            raise StudyError(path, f"points[{index}] has no value for {', '.join(missing)}")
        label = str(entry.get("label") or ", ".join(f"{k}={entry['values'][k]}" for k in keys))
        points.append(SweepPoint(index, dict(entry["values"]), label, root / entry["study_dir"]))
    return Sweep(root, str(payload.get("name", root.name)), keys, tuple(points))


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def sweep_rows(sweep: Sweep, results: Mapping[int, Sequence[Comparison]]) -> list[dict[str, Any]]:
    """The combined table: one row per point, baseline arm and task (Delta_m and worst task repeated per row)."""
    rows = []
    for point in sweep.points:
        for comparison in results[point.index]:
            worst = comparison.worst_task
            worst_spread = comparison.tasks[worst].spread if worst is not None else None
            for task, delta in comparison.tasks.items():
                rows.append(
                    {
                        "point": point.index,
                        "label": point.label,
                        **{key: point.values[key] for key in sweep.keys},
                        "arm": comparison.arm,
                        "baseline": comparison.baseline,
                        "task": task,
                        "delta_mean": delta.spread.mean,
                        "delta_std": delta.spread.std,
                        "seeds": delta.spread.n,
                        "verdict": delta.verdict,
                        "p_value": delta.test.p_value,
                        "p_adjusted": delta.p_adjusted,
                        "p_unit": delta.test.unit,
                        "delta_m_mean": comparison.delta_m.mean,
                        "delta_m_std": comparison.delta_m.std,
                        "worst_task": worst,
                        "worst_delta_mean": None if worst_spread is None else worst_spread.mean,
                        "worst_delta_std": None if worst_spread is None else worst_spread.std,
                    }
                )
    return rows


def sweep_table(sweep: Sweep, results: Mapping[int, Sequence[Comparison]]) -> Table:
    """The markdown form of :func:`sweep_rows`."""
    rows = []
    for point in sweep.points:
        for comparison in results[point.index]:
            worst = comparison.worst_task
            worst_text = NOT_AVAILABLE if worst is None else f"{worst}: {format_delta(comparison.tasks[worst].spread)}"
            for task, delta in comparison.tasks.items():
                rows.append(
                    [
                        point.label,
                        *(_cell(point.values[key]) for key in sweep.keys),
                        comparison.label,
                        task,
                        format_delta(delta.spread),
                        f"{format_verdict(comparison, delta.verdict)} ({format_test(delta.test, delta.p_adjusted)})",
                        format_delta(comparison.delta_m),
                        worst_text,
                    ]
                )
    return Table(["point", *sweep.keys, "arm vs baseline", "task", "Δ", "verdict (test)", "Δm", "worst task"], rows)


def _other_values(point: SweepPoint, keys: Sequence[str]) -> str:
    """``key=value, ...`` of the swept keys that are not on the x axis (one plot line per combination)."""
    return ", ".join(f"{key}={_cell(point.values[key])}" for key in keys)


def sweep_series(sweep: Sweep, results: Mapping[int, Sequence[Comparison]]) -> list[SweepSeries]:
    """x = the first key's value; one line per combination of the other keys' values and baseline arm."""
    first, rest = sweep.keys[0], sweep.keys[1:]
    lines: dict[str, SweepSeries] = {}
    for point in sweep.points:
        for comparison in results[point.index]:
            if comparison.worst_task is None:
                continue
            others = _other_values(point, rest)
            label = f"{others} · {comparison.label}" if others else comparison.label
            line = lines.setdefault(label, SweepSeries(label, [], [], []))
            worst = comparison.tasks[comparison.worst_task].spread
            line.x.append(point.values[first])
            line.delta_m.append((comparison.delta_m.mean, comparison.delta_m.std))
            line.worst.append((worst.mean, worst.std))
    return list(lines.values())


def conflict_table(sweep: Sweep, conflicts: Mapping[int, ConflictSummary]) -> Table:
    """Per point: the reference arm's conflict diagnostics (:func:`fedmtl.report.conflict.conflict_columns`)."""
    header, values = conflict_columns([conflicts[point.index] for point in sweep.points])
    rows = [
        [point.label, *(_cell(point.values[key]) for key in sweep.keys), *map(format_cosine, row)]
        for point, row in zip(sweep.points, values)
    ]
    return Table(["point", *sweep.keys, *header], rows)


def conflict_series(sweep: Sweep, conflicts: Mapping[int, ConflictSummary]) -> list[ConflictSeries]:
    """x = the first key's value; one line per diagnostic and combination of the other keys' values."""
    first, rest = sweep.keys[0], sweep.keys[1:]
    names, values = cosine_columns([conflicts[point.index] for point in sweep.points])
    lines: dict[str, ConflictSeries] = {}
    for point, row in zip(sweep.points, values):
        others = _other_values(point, rest)
        for name, spread in zip(names, row):
            if spread is None:
                continue
            label = f"{name} · {others}" if others else name
            line = lines.setdefault(label, ConflictSeries(label, [], []))
            line.x.append(point.values[first])
            line.values.append((spread.mean, spread.std))
    return list(lines.values())


def write_sweep_report(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write sweep.md, sweep.csv and sweep.png into ``sweep_dir``; return the table's rows."""
    sweep = load_sweep(sweep_dir)
    studies: dict[int, StudyData] = {point.index: collect_study(point.study_dir) for point in sweep.points}
    results = {index: headline(comparisons(data)) for index, data in studies.items()}
    conflicts = {index: summarize_conflict(data, data.study.reference_arm) for index, data in studies.items()}
    rows = sweep_rows(sweep, results)
    columns = [
        "point",
        "label",
        *sweep.keys,
        "arm",
        "baseline",
        "task",
        "delta_mean",
        "delta_std",
        "seeds",
        "verdict",
        "p_value",
        "p_adjusted",
        "p_unit",
        "delta_m_mean",
        "delta_m_std",
        "worst_task",
        "worst_delta_mean",
        "worst_delta_std",
    ]
    with (sweep.path / SWEEP_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(
            {k: "" if v is None else (v if isinstance(v, str | int | float) else _cell(v)) for k, v in row.items()}
            for row in rows
        )
    figure = plot_sweep(sweep_series(sweep, results), sweep.keys[0], sweep.path / SWEEP_PNG)

    blocks: list[Block] = [
        Heading(f"Sweep report: {sweep.name}", level=1),
        Paragraph(f"Swept keys: {', '.join(f'`{k}`' for k in sweep.keys)}; {len(sweep.points)} point(s)."),
        sweep_table(sweep, results),
    ]
    if figure is not None:
        blocks.append(Image(figure, f"Δm and worst-task delta against {sweep.keys[0]} (mean ± std over seeds)."))
    tradeoff = privacy_utility_series([(studies[p.index], results[p.index], other_settings(p)) for p in sweep.points])
    privacy_figure = plot_privacy_utility(tradeoff, sweep.path / PRIVACY_UTILITY_PNG)
    if privacy_figure is not None:
        caption = "Privacy–utility: each task's Δ against local training over the epsilon its arm spent (mean ± std over seeds)."
        blocks.append(Image(privacy_figure, caption))
    reference = next(iter(conflicts.values())).arm if conflicts else None
    blocks += [
        Heading(f"Conflict diagnostics ({reference})", level=2),
        Paragraph(COLUMNS_EXPLAINED),
        conflict_table(sweep, conflicts),
    ]
    conflict_figure = plot_sweep_conflict(
        conflict_series(sweep, conflicts), sweep.keys[0], str(reference), sweep.path / SWEEP_CONFLICT_PNG
    )
    if conflict_figure is not None:
        blocks.append(
            Image(conflict_figure, f"Gradient-conflict diagnostics against {sweep.keys[0]} (mean ± std over seeds).")
        )
    (sweep.path / SWEEP_MD).write_text(to_markdown(blocks, sweep.path))
    return rows


def other_settings(point: SweepPoint) -> str:
    """What a sweep point sets besides the privacy mechanism (``privacy.*``), as ``key=value, ...``."""
    return ", ".join(f"{key}={value}" for key, value in point.values.items() if not key.startswith("privacy."))
