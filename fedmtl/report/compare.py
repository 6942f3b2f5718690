"""``fedmtl compare DIR DIR ...``: runs and studies that already ran, side by side, without running anything.

Each directory is a run directory (``summary.json`` + ``metrics.jsonl``: one entry, one seed) or a
study directory (``study.json``: one entry per arm, its seeds). The comparison is a per-task table
of final headline metrics (mean ± std over seeds) and one learning-curve panel per task, written
as compare.md, compare.html and plots/learning_curves.png into the output directory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmtl.core.layout import COMPARE_HTML, COMPARE_MD, STUDY_FILE, SUMMARY_JSON
from fedmtl.report.collect import DONE, Run, RunResult, StudyError, Task, collect_study, read_json, read_run
from fedmtl.report.deltas import Spread, mean_std
from fedmtl.report.plots import band_line, new_figure, save_figure
from fedmtl.report.render import Block, Heading, Image, Paragraph, Table, to_html, to_markdown


@dataclass(frozen=True)
class Entry:
    """One column of the comparison: a run, or one arm of a study, with its seeds."""

    label: str
    source: Path
    tasks: tuple[Task, ...]
    results: tuple[RunResult, ...]

    def final(self, task: str) -> Spread:
        return mean_std(r.final[task] for r in self.results if task in r.final)

    def curves(self, task: str) -> list[dict[int, float]]:
        return [r.curves[task] for r in self.results if task in r.curves]


def run_tasks(path: Path, payload: Any) -> tuple[Task, ...]:
    """The tasks of a run directory, from its ``summary.json`` (``payload``)."""
    try:
        return tuple(Task(str(t["task"]), str(t["metric"]), bool(t["higher_is_better"])) for t in payload["tasks"])
    except (KeyError, TypeError):
        raise StudyError(path / SUMMARY_JSON, "needs a 'tasks' list with task, metric and higher_is_better") from None


def load_entries(directory: str | Path) -> list[Entry]:
    """The entries of one directory: every arm of a study, or the run itself."""
    path = Path(directory)
    if (path / STUDY_FILE).is_file():
        data = collect_study(path)
        return [
            Entry(f"{path.name}/{arm}", path, data.study.tasks, tuple(data.arm_results(arm)))
            for arm in data.study.arms
            if data.arm_results(arm)
        ]
    if (path / SUMMARY_JSON).is_file():
        payload = read_json(path / SUMMARY_JSON)
        tasks = run_tasks(path, payload)
        seed = int(payload.get("seed", 0)) if isinstance(payload, dict) else 0
        return [Entry(path.name, path, tasks, (read_run(Run(path.name, seed, path, DONE), tasks),))]
    raise StudyError(path, f"neither a study directory ({STUDY_FILE}) nor a finished run directory ({SUMMARY_JSON})")


def gather(directories: Sequence[str | Path]) -> list[Entry]:
    """Entries of every directory, labels made unique with the parent folder where two clash."""
    entries = [entry for directory in directories for entry in load_entries(directory)]
    labels = [e.label for e in entries]
    return [
        Entry(f"{e.source.parent.name}/{e.label}", e.source, e.tasks, e.results) if labels.count(e.label) > 1 else e
        for e in entries
    ]


def all_tasks(entries: Sequence[Entry]) -> list[Task]:
    """Tasks in first-seen order; a task measured with different metrics is an error."""
    seen: dict[str, Task] = {}
    for entry in entries:
        for task in entry.tasks:
            if task.name in seen and seen[task.name] != task:
                raise StudyError(
                    entry.source,
                    f"task {task.name!r} is measured by {task.metric}, elsewhere by {seen[task.name].metric}",
                )
            seen.setdefault(task.name, task)
    return list(seen.values())


def final_table(entries: Sequence[Entry], tasks: Sequence[Task]) -> Table:
    """Rows: tasks; columns: each entry's final metric, mean ± std (seeds); the best mean in bold."""
    rows = []
    for task in tasks:
        spreads = [entry.final(task.name) for entry in entries]
        finite = [s.mean for s in spreads if s.n and not math.isnan(s.mean)]
        best = (max if task.higher_is_better else min)(finite) if finite else None
        cells = []
        for spread in spreads:
            if not spread.n:
                cells.append("—")
                continue
            text = f"{spread.mean:.4f} ± {spread.std:.4f} ({spread.n})"
            cells.append(f"**{text}**" if spread.mean == best and len(finite) > 1 else text)
        rows.append([task.name, f"{task.metric} ({'↑' if task.higher_is_better else '↓'})", *cells])
    return Table(["task", "metric", *(e.label for e in entries)], rows)


def plot_curves(entries: Sequence[Entry], tasks: Sequence[Task], path: Path) -> Path | None:
    """One panel per task: each entry's eval learning curve (mean over seeds, band ± 1 std)."""
    shown = [t for t in tasks if any(e.curves(t.name) for e in entries)]
    if not shown:
        return None
    fig, axes = new_figure(len(shown))
    for ax, task in zip(axes, shown):
        for entry in entries:
            if curves := entry.curves(task.name):
                band_line(ax, curves, entry.label)
        ax.set_title(f"{task.name} ({'higher' if task.higher_is_better else 'lower'} is better)")
        ax.set_xlabel("round")
        ax.set_ylabel(task.metric)
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def write_comparison(directories: Sequence[str | Path], out: str | Path) -> str:
    """Write compare.md, compare.html and the curves into ``out``; return the table as markdown."""
    entries = gather(directories)
    if len(entries) < 2:
        raise StudyError(Path(directories[0]), "nothing to compare with: give two runs, or a study with two arms")
    tasks = all_tasks(entries)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    table = final_table(entries, tasks)
    sources = ", ".join(f"`{e.label}`: {e.source}" for e in entries)
    blocks: list[Block] = [
        Heading("Comparison", level=1),
        Paragraph(
            f"Final headline metric in the eval split (example-weighted over clients, last eval round), mean ± std "
            f"over seeds (number of seeds); best in bold. Sources: {sources}."
        ),
        table,
    ]
    figure = plot_curves(entries, tasks, root / "plots" / "learning_curves.png")
    if figure is not None:
        blocks += [Heading("Learning curves"), Image(figure, "Eval headline metric per round (band: ± 1 std).")]
    (root / COMPARE_MD).write_text(to_markdown(blocks, root))
    (root / COMPARE_HTML).write_text(to_html(blocks, "fedmtl comparison"))
    return to_markdown([table], root)
