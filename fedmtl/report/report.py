"""``write_report(study_dir)``: report.md, report.html, plots/*.png and summary.json for one study.

The report opens with its headline figure (a forest plot of each compared pair's paired relative
delta per task with its interval, flags marked), then the comparison table (delta, interval, the
test's p and adjusted p, verdict; Maninis et al., CVPR 2019 for the deltas), final metrics,
per-client results, communication cost, conflict diagnostics and the other plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmtl.core.layout import PLOTS_DIR, REPORT_HTML, REPORT_MD, SUMMARY_JSON
from fedmtl.report import plots
from fedmtl.report.adaptive import adaptive_blocks, plot_client_affinity, plot_grouping, plot_task_affinity
from fedmtl.report.analysis import (
    DELTA_SIGN,
    Comparison,
    comparison_dict,
    comparisons,
    flag_rule,
    json_ready,
    summarize,
)
from fedmtl.report.calibration import CALIBRATION_METRICS, calibration_comparisons
from fedmtl.report.collect import StudyData, collect_study
from fedmtl.report.conflict import COLUMNS_EXPLAINED, conflict_columns, summarize_conflict
from fedmtl.report.data_checks import data_check_blocks
from fedmtl.report.deltas import CONFIDENCE, CORRECTION_NAMES, TEST_NAME, PairedTest, Spread, Verdict, mean_std
from fedmtl.report.gates import gate_blocks
from fedmtl.report.privacy import privacy_blocks
from fedmtl.report.render import Block, Heading, Image, Paragraph, Table, to_html, to_markdown
from fedmtl.report.setup import setup_blocks

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
    """``0.0123``; exactly 0 only comes from a difference with no spread over seeds at all."""
    if p_value is None:
        return NOT_AVAILABLE
    return "0 (no spread)" if p_value == 0 else f"{p_value:.3g}"


def flag_word(comparison: Comparison) -> str:
    """Worse than a single-task arm is negative transfer; worse than another multi-task arm is only worse."""
    return "NEGATIVE TRANSFER" if comparison.single_task else "WORSE"


def format_verdict(comparison: Comparison, verdict: Verdict | None) -> str:
    """``**worse**`` (``**NEGATIVE TRANSFER**`` against a single-task arm), ``better``, ``no``, or n/a without a test."""
    if verdict is None:
        return f"{NOT_AVAILABLE} (< 2 pairs)"
    if verdict == "worse":
        return f"**{flag_word(comparison)}**"
    return "better" if verdict == "better" else "no"


def format_interval(test: PairedTest) -> str:
    if test.unit is None:
        return NOT_AVAILABLE
    return f"[{100 * test.low:+.2f}, {100 * test.high:+.2f}] %"


def format_test(test: PairedTest, adjusted: float | None) -> str:
    """``p=0.004, adj. 0.008 (8 seeds)``."""
    if test.unit is None:
        return NOT_AVAILABLE
    return f"p={format_p(test.p_value)}, adj. {format_p(adjusted)} ({test.pairs} {test.unit})"


def format_bytes(count: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f} B"


def final_table(data: StudyData) -> Table:
    """Rows: tasks; columns: each arm's final metric (mean ± std over seeds)."""
    study = data.study
    rows = [
        [
            task.name,
            f"{task.metric} ({'↑' if task.higher_is_better else '↓'})",
            *(format_value(mean_std(data.final(arm, task.name).values())) for arm in study.arms),
        ]
        for task in study.tasks
    ]
    return Table(["task", "metric", *study.arms], rows)


def comparison_table(shown: Sequence[Comparison]) -> Table:
    """Rows: per pair, its tasks, then Δm and the worst task; columns: Δ, interval, test, verdict."""
    header = ["arm vs baseline", "task", "Δ (mean ± std)", f"{CONFIDENCE:.0%} CI", f"{TEST_NAME} (adjusted)", "verdict"]
    rows = []
    for comparison in shown:
        for name, delta in comparison.tasks.items():
            rows.append(
                [
                    comparison.label,
                    name,
                    format_delta(delta.spread),
                    format_interval(delta.test),
                    format_test(delta.test, delta.p_adjusted),
                    format_verdict(comparison, delta.verdict),
                ]
            )
        test = comparison.delta_m_test
        rows.append(
            [
                comparison.label,
                "Δm (mean over tasks)",
                format_delta(comparison.delta_m),
                format_interval(test),
                NOT_AVAILABLE
                if test.unit is None
                else f"p={format_p(test.p_value)}, not adjusted ({test.pairs} seeds)",
                "",
            ]
        )
        worst = comparison.worst_task
        worst_text = NOT_AVAILABLE if worst is None else f"{worst}: {format_delta(comparison.tasks[worst].spread)}"
        worst_verdict = "" if worst is None else format_verdict(comparison, comparison.tasks[worst].verdict)
        rows.append([comparison.label, "worst task", worst_text, "", "", worst_verdict])
    return Table(header, rows)


def client_final_table(data: StudyData) -> Table:
    """Rows: (task, client); columns: each arm's final metric on that client (mean ± std over seeds)."""
    study = data.study
    rows = []
    for task in study.tasks:
        for client in data.clients(task.name):
            row = [task.name, str(client)]
            for arm in study.arms:
                values = [v[client] for v in data.final_by_client(arm, task.name).values() if client in v]
                row.append(format_value(mean_std(values)))
            rows.append(row)
    return Table(["task", "client", *study.arms], rows)


def client_summary_table(shown: Sequence[Comparison]) -> Table:
    """Rows: (pair, client); columns: its tasks, Delta_m over them, the test, verdict, its worst task."""
    rows = []
    for comparison in shown:
        for client in comparison.clients.values():
            worst = client.worst_task
            worst_text = (
                NOT_AVAILABLE
                if worst is None
                else f"{worst}: {format_delta(comparison.tasks[worst].clients[client.client].spread)}"
            )
            rows.append(
                [
                    comparison.label,
                    str(client.client),
                    ", ".join(client.tasks),
                    format_delta(client.delta_m),
                    format_test(client.test, client.p_adjusted),
                    format_verdict(comparison, client.verdict),
                    worst_text,
                ]
            )
    header = ["arm vs baseline", "client", "tasks", "Δm", f"{TEST_NAME} (adjusted)", "verdict", "worst task"]
    return Table(header, rows)


def client_delta_table(shown: Sequence[Comparison]) -> Table:
    """Rows: (pair, task, client); columns: Δ over seeds, its test with the p adjusted over the task's clients, verdict."""
    rows = []
    for comparison in shown:
        for name, task in comparison.tasks.items():
            for client, delta in task.clients.items():
                rows.append(
                    [
                        comparison.label,
                        name,
                        str(client),
                        format_delta(delta.spread),
                        format_test(delta.test, delta.p_adjusted),
                        format_verdict(comparison, delta.verdict),
                    ]
                )
    return Table(["arm vs baseline", "task", "client", "Δ", f"{TEST_NAME} (adjusted)", "verdict"], rows)


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
    """Per arm with diagnostics: mean over rounds, then mean ± std over seeds (``fedmtl.report.conflict``)."""
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
    """Every figure that has data, headline figure first; name -> PNG path."""
    drawn = {
        "forest": plots.plot_forest(shown, [t.name for t in data.study.tasks], plot_dir / "forest.png"),
        "learning_curves": plots.plot_learning_curves(data, plot_dir / "learning_curves.png"),
        "client_cosines": plots.plot_client_cosines(data, plot_dir / "client_cosines.png"),
        "conflict_fraction": plots.plot_conflict_fraction(data, plot_dir / "conflict_fraction.png"),
        "task_cosines": plots.plot_task_cosines(data, plot_dir / "task_cosines.png"),
        "task_affinity": plot_task_affinity(data, plot_dir / "task_affinity.png"),
        "client_affinity": plot_client_affinity(data, plot_dir / "client_affinity.png"),
        "grouping": plot_grouping(data, plot_dir / "grouping.png"),
    }
    return {name: path for name, path in drawn.items() if path is not None}


CAPTIONS = {
    "forest": (
        f"Paired relative delta per task and Δm (%, > 0: the arm is better than its baseline): mean over seeds "
        f"with its {CONFIDENCE:.0%} t-interval. Red: significantly worse, green: significantly better "
        "(adjusted p below the significance level); the adjusted p is printed on the right."
    ),
    "learning_curves": "Eval headline metric per round (mean over seeds, band: ± 1 std).",
    "client_cosines": "Cosine between client updates per client pair and round (mean over seeds).",
    "conflict_fraction": "Fraction of client-update pairs with negative cosine per round (mean ± 1 std over seeds).",
    "task_cosines": "Cosine between task gradients inside clients per round (client mean; band: ± 1 std over seeds).",
    "grouping": "Groups of clients per round (server.grouping): adjusted Rand index against the clients' task sets "
    "(1 = the task split) and the number of groups, mean ± 1 std over seeds.",
    "task_affinity": (
        "Lookahead task affinity Z(from → to) = 1 − L_to(after a step on from) / L_to (TAG), mean over clients, "
        "rounds and seeds; blue: a step on the row's task lowers the column's loss."
    ),
    "client_affinity": (
        "Lookahead client affinity Z(from → to) = mean over the column client's tasks of 1 − L(the row client's "
        "trained encoder) / L(the encoder it started from), on the column client's data "
        "(server.client_affinity_every), mean over probed rounds and seeds; blue: the row's round helps the column."
    ),
}


def build_blocks(
    data: StudyData,
    all_comparisons: Sequence[Comparison],
    summary: dict[str, Any],
    plot_paths: dict[str, Path],
    calibration: dict[str, list[Comparison]] | None = None,
) -> list[Block]:
    study = data.study
    intro = (
        f"Arms {', '.join(f'`{a}`' for a in study.arms)}; seeds {', '.join(map(str, study.seeds))}; "
        f"{len(data.results)} finished run(s) read; {len(all_comparisons)} paired comparison(s)."
    )
    if data.skipped:
        skipped = ", ".join(f"{r.arm}/seed-{r.seed} ({r.status or 'no status'})" for r in data.skipped)
        intro += f" Skipped (not done): {skipped}."
    blocks: list[Block] = [
        Heading(f"Study report: {study.name}", level=1),
        Paragraph(intro),
        *setup_blocks(study.path),
        *data_check_blocks(data),
    ]
    if "forest" in plot_paths:
        blocks.append(Image(plot_paths["forest"], CAPTIONS["forest"]))
    blocks += [
        Heading("Paired comparisons"),
        Paragraph(
            "Δ: relative delta of the arm over its baseline, (-1)^l (M_arm - M_base) / M_base with l = 1 when lower "
            "is better (Maninis et al., CVPR 2019), paired by seed; Δm: its mean over tasks. "
            f"Sign: {DELTA_SIGN}. Test: {flag_rule(study)}. Against a single-task arm, significantly worse is "
            "**NEGATIVE TRANSFER**."
        ),
        comparison_table(all_comparisons),
        Heading("Final metrics"),
        Paragraph(
            "Example-weighted mean over clients of the headline metric in the eval split at the task's last eval "
            "round, mean ± std over seeds."
        ),
        final_table(data),
        Heading("Per-client results"),
        Paragraph("Each client's own final metric (mean ± std over seeds)."),
        client_final_table(data),
        Paragraph(
            f"Each client's Δm over the tasks it holds, paired by seed; p adjusted by "
            f"{CORRECTION_NAMES[study.correction]} over the clients of the pair."
        ),
        client_summary_table(all_comparisons),
        Paragraph(
            f"Each client's Δ over paired seeds; p adjusted by {CORRECTION_NAMES[study.correction]} over the "
            "clients that hold the task."
        ),
        client_delta_table(all_comparisons),
        *calibration_blocks(calibration or {}),
        *privacy_blocks(data),
        *gate_blocks(data),
        *adaptive_blocks(data, all_comparisons),
        *communication_blocks(summary),
        *conflict_blocks(data),
    ]
    others = [name for name in plot_paths if name != "forest"]
    if others:
        blocks.append(Heading("Plots"))
        blocks += [Image(plot_paths[name], CAPTIONS[name]) for name in others]
    return blocks


def calibration_blocks(found: dict[str, list[Comparison]]) -> list[Block]:
    """The paired comparisons on the calibration metrics, where classification tasks report them."""
    if not found:
        return []
    blocks: list[Block] = [
        Heading("Calibration"),
        Paragraph(
            "The same paired comparisons on the calibration of classification tasks (lower is better for both; "
            "Δ > 0: the arm is better calibrated than its baseline; Δm: mean over the tasks shown)."
        ),
    ]
    for metric, shown in found.items():
        blocks += [Paragraph(f"**{metric}**: {CALIBRATION_METRICS[metric]}."), comparison_table(shown)]
    return blocks


def write_report(study_dir: str | Path) -> dict[str, Any]:
    """Write report.md, report.html, plots/*.png and summary.json into ``study_dir``; return the summary."""
    root = Path(study_dir)
    data = collect_study(root)
    all_comparisons = comparisons(data)
    summary = summarize(data, all_comparisons)
    calibration = calibration_comparisons(data)
    summary["calibration"] = {metric: [comparison_dict(c) for c in shown] for metric, shown in calibration.items()}
    plot_paths = draw_plots(data, all_comparisons, root / PLOTS_DIR)
    summary["plots"] = {name: path.relative_to(root).as_posix() for name, path in plot_paths.items()}
    summary = json_ready(summary)
    blocks = build_blocks(data, all_comparisons, summary, plot_paths, calibration)
    (root / REPORT_MD).write_text(to_markdown(blocks, root))
    (root / REPORT_HTML).write_text(to_html(blocks, f"Study report: {data.study.name}"))
    (root / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
