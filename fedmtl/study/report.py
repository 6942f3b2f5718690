"""``write_report(study_dir)``: report.md, report.html, plots/*.png and summary.json for one study.

The report opens with the per-task table (each arm's final metric, the reference arm's relative
delta against each single-task arm, Delta_m, worst task, negative-transfer flag with p-value;
Maninis et al., CVPR 2019 for the deltas), then per-client results, communication cost and plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmtl.study import plots
from fedmtl.study.analysis import Comparison, comparisons, headline, json_ready, summarize
from fedmtl.study.collect import StudyData, collect_study
from fedmtl.study.conflict import COLUMNS_EXPLAINED, conflict_columns, summarize_conflict
from fedmtl.study.deltas import MIN_WILCOXON_PAIRS, NEGATIVE_TRANSFER_CONFIDENCE, PairedTest, Spread, mean_std
from fedmtl.study.render import Block, Heading, Image, Paragraph, Table, to_html, to_markdown

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
PLOTS_DIR = "plots"
NOT_AVAILABLE = "n/a"


def format_value(spread: Spread) -> str:
    return NOT_AVAILABLE if spread.n == 0 or math.isnan(spread.mean) else f"{spread.mean:.4f} ± {spread.std:.4f}"


def format_delta(spread: Spread) -> str:
    if spread.n == 0 or math.isnan(spread.mean):
        return NOT_AVAILABLE
    return f"{100 * spread.mean:+.2f} ± {100 * spread.std:.2f} %"


def format_cosine(spread: Spread | None) -> str:
    return NOT_AVAILABLE if spread is None else f"{spread.mean:+.3f} ± {spread.std:.3f}"


def format_p(p_value: float | None) -> str:
    return NOT_AVAILABLE if p_value is None else f"{p_value:.3g}"


def flag_word(comparison: Comparison) -> str:
    """Worse than a single-task arm is negative transfer; worse than another multi-task arm is only worse."""
    return "NEGATIVE TRANSFER" if comparison.single_task else "WORSE"


def format_flag(comparison: Comparison, flagged: bool, test: PairedTest, seeds: int) -> str:
    """The flag word (or "no", or "n/a" when fewer than two seeds leave the seed noise unknown) and the p-value."""
    word = f"**{flag_word(comparison)}**" if flagged else ("no" if seeds >= 2 else f"{NOT_AVAILABLE} (< 2 seeds)")
    detail = f"p={format_p(test.p_value)}, {test.pairs} {test.unit}" if test.unit else f"p={NOT_AVAILABLE}"
    return f"{word} ({detail})"


def format_bytes(count: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f} B"


def delta_table(data: StudyData, shown: Sequence[Comparison], with_finals: bool) -> Table:
    """Rows: tasks, then Delta_m and the worst task; columns: finals per arm (optional), delta and flag per baseline."""
    study = data.study
    arms = list(study.arms) if with_finals else []
    header = ["task", "metric", *arms]
    for comparison in shown:
        header += [f"Δ vs {comparison.baseline}", f"flag vs {comparison.baseline} (p)"]
    rows = []
    for task in study.tasks:
        row = [task.name, f"{task.metric} ({'↑' if task.higher_is_better else '↓'})"]
        row += [format_value(mean_std(data.final(arm, task.name).values())) for arm in arms]
        for comparison in shown:
            delta = comparison.tasks[task.name]
            row += [
                format_delta(delta.spread),
                format_flag(comparison, delta.negative_transfer, delta.test, delta.spread.n),
            ]
        rows.append(row)
    summary_row = ["**Δm**", "mean over tasks", *("" for _ in arms)]
    worst_row = ["**worst task**", "lowest mean Δ", *("" for _ in arms)]
    for comparison in shown:
        summary_row += [format_delta(comparison.delta_m), ""]
        worst = comparison.worst_task
        if worst is None:
            worst_row += [NOT_AVAILABLE, ""]
        else:
            delta = comparison.tasks[worst]
            flag = f"**{flag_word(comparison)}**" if delta.negative_transfer else "no"
            worst_row += [f"{worst}: {format_delta(delta.spread)}", flag]
    return Table(header, [*rows, summary_row, worst_row])


def client_table(data: StudyData, shown: Sequence[Comparison]) -> Table:
    """Rows: (task, client); columns: each arm's final metric, then delta, flag and p (over seeds) per baseline."""
    study = data.study
    header = ["task", "client", *study.arms, *(f"Δ vs {c.baseline} (flag, p)" for c in shown)]
    rows = []
    for task in study.tasks:
        for client in data.clients(task.name):
            row = [task.name, str(client)]
            for arm in study.arms:
                values = [v[client] for v in data.final_by_client(arm, task.name).values() if client in v]
                row.append(format_value(mean_std(values)))
            for comparison in shown:
                delta = comparison.tasks[task.name].clients.get(client)
                if delta is None:
                    row.append(NOT_AVAILABLE)
                    continue
                flag = f" **{flag_word(comparison)}**" if delta.negative_transfer else ""
                row.append(f"{format_delta(delta.spread)}{flag} (p={format_p(delta.p_value)})")
            rows.append(row)
    return Table(header, rows)


def communication_blocks(summary: dict[str, Any]) -> list[Block]:
    header = ["arm", "rounds", "bytes up / round", "bytes down / round", "bytes up total", "bytes down total", "total"]
    rows = []
    for arm, cost in summary["communication"].items():
        if cost is None:
            rows.append([arm, "—", "—", "—", "—", "—", "not recorded (no bytes in server.jsonl)"])
            continue
        rows.append(
            [
                arm,
                f"{cost['rounds']:g}",
                *(
                    format_bytes(cost[key])
                    for key in ("bytes_up_per_round", "bytes_down_per_round", "bytes_up_total", "bytes_down_total")
                ),
                format_bytes(cost["bytes_total"]),
            ]
        )
    blocks: list[Block] = [
        Heading("Communication cost"),
        Paragraph("Means over seeds; per round: mean over the rounds whose server row reports bytes."),
        Table(header, rows),
    ]
    saving = summary["communication_saving"]
    if saving is not None:

        def pct(value: float | None) -> str:
            return NOT_AVAILABLE if value is None or math.isnan(value) else f"{100 * value:.1f} %"

        blocks.append(
            Paragraph(
                f"Encoder-only sharing (`{saving['encoder_only_arm']}`) saves {pct(saving['total'])} of the bytes of "
                f"full-model sharing (`{saving['full_model_arm']}`): {pct(saving['up'])} up, {pct(saving['down'])} down."
            )
        )
    return blocks


def conflict_blocks(data: StudyData) -> list[Block]:
    """Per arm with diagnostics: mean over rounds, then mean ± std over seeds (``fedmtl.study.conflict``)."""
    summaries = [summary for arm in data.study.arms if not (summary := summarize_conflict(data, arm)).empty]
    if not summaries:
        return []
    header, values = conflict_columns(summaries)
    rows = [[f"`{summary.arm}`", *map(format_cosine, row)] for summary, row in zip(summaries, values)]
    return [
        Heading("Conflict diagnostics"),
        Paragraph(COLUMNS_EXPLAINED),
        Table(["arm", *header], rows),
    ]


def draw_plots(data: StudyData, shown: Sequence[Comparison], plot_dir: Path) -> dict[str, Path]:
    """Every figure that has data; name -> PNG path."""
    drawn = {
        "learning_curves": plots.plot_learning_curves(data, plot_dir / "learning_curves.png"),
        "deltas": plots.plot_deltas(shown, [t.name for t in data.study.tasks], plot_dir / "deltas.png"),
        "client_cosines": plots.plot_client_cosines(data, plot_dir / "client_cosines.png"),
        "conflict_fraction": plots.plot_conflict_fraction(data, plot_dir / "conflict_fraction.png"),
        "task_cosines": plots.plot_task_cosines(data, plot_dir / "task_cosines.png"),
    }
    return {name: path for name, path in drawn.items() if path is not None}


CAPTIONS = {
    "learning_curves": "Eval headline metric per round (mean over seeds, band: ± 1 std).",
    "deltas": "Relative delta of the reference arm per task and Δm (error bars: ± 1 std over seeds; NT: flagged).",
    "client_cosines": "Cosine between client updates per client pair and round (mean over seeds).",
    "conflict_fraction": "Fraction of client-update pairs with negative cosine per round (mean ± 1 std over seeds).",
    "task_cosines": "Cosine between task gradients inside clients per round (client mean; band: ± 1 std over seeds).",
}


def build_blocks(
    data: StudyData, all_comparisons: Sequence[Comparison], summary: dict[str, Any], plot_paths: dict[str, Path]
) -> list[Block]:
    study = data.study
    shown = headline(all_comparisons)
    others = [c for c in all_comparisons if c not in shown]
    intro = (
        f"Reference arm `{study.reference_arm}`; arms {', '.join(f'`{a}`' for a in study.arms)}; "
        f"seeds {', '.join(map(str, study.seeds))}; {len(data.results)} finished run(s) read."
    )
    if data.skipped:
        skipped = ", ".join(f"{r.arm}/seed-{r.seed} ({r.status or 'no status'})" for r in data.skipped)
        intro += f" Skipped (not done): {skipped}."
    blocks: list[Block] = [
        Heading(f"Study report: {study.name}", level=1),
        Paragraph(intro),
        Heading("Per-task results"),
        delta_table(data, shown, with_finals=True),
        Paragraph(
            "Final metric: example-weighted mean over clients of the headline metric in the eval split at the task's "
            "last eval round, mean ± std over seeds. Δ: relative delta of the reference arm, "
            "(-1)^l (M_ref - M_base) / M_base with l = 1 when lower is better (Maninis et al., CVPR 2019), paired by "
            "seed; Δm: mean of the per-task deltas. Flag: the two-sided "
            f"{NEGATIVE_TRANSFER_CONFIDENCE:.0%} Student-t interval of the mean paired delta lies below zero. "
            f"p: two-sided Wilcoxon signed-rank test over paired seeds (≥ {MIN_WILCOXON_PAIRS}), else over paired "
            "clients (each client's delta averaged over seeds); n/a when fewer pairs."
        ),
    ]
    if others:
        blocks += [Heading("Reference arm against the other arms"), delta_table(data, others, with_finals=False)]
    blocks += [
        Heading("Per-client results"),
        Paragraph("Each client's own final metric (mean ± std over seeds); Δ, flag and p over paired seeds."),
        client_table(data, shown),
        *communication_blocks(summary),
        *conflict_blocks(data),
    ]
    if plot_paths:
        blocks.append(Heading("Plots"))
        blocks += [Image(path, CAPTIONS[name]) for name, path in plot_paths.items()]
    return blocks


def write_report(study_dir: str | Path) -> dict[str, Any]:
    """Write report.md, report.html, plots/*.png and summary.json into ``study_dir``; return the summary."""
    root = Path(study_dir)
    data = collect_study(root)
    all_comparisons = comparisons(data)
    summary = summarize(data, all_comparisons)
    plot_paths = draw_plots(data, headline(all_comparisons), root / PLOTS_DIR)
    summary["plots"] = {name: path.relative_to(root).as_posix() for name, path in plot_paths.items()}
    summary = json_ready(summary)
    blocks = build_blocks(data, all_comparisons, summary, plot_paths)
    (root / REPORT_MD).write_text(to_markdown(blocks, root))
    (root / REPORT_HTML).write_text(to_html(blocks, f"Study report: {data.study.name}"))
    (root / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
