"""The report's answers on avoiding negative transfer: a keep / roll back / inconclusive verdict per
task against training alone, the groups a grouped federation formed (against the true task split),
the roll-back choices clients made, the task affinity they measured, and a short section answering
the practitioner's questions from the study's own evidence.

Verdict per task, for each comparison of a multi-task arm with a single-task arm (paired by seed,
the study's test and correction):

* **keep federated multi-task**: the task is significantly better than training alone and no client
  holding it is significantly worse;
* **roll back to single-task**: the task is significantly worse (negative transfer);
* **inconclusive**: anything else (no significant difference, or a gain that some client pays for).

The numbers behind each verdict are shown with it: the mean delta, its interval, the adjusted p, the
worst client's mean delta and how many seeds moved the task the same way as the mean.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedmtl.core.layout import CONFIG_FILE, ROLLBACK_FILE, SERVER_FILE
from fedmtl.methods.grouping.clustering import adjusted_rand_index
from fedmtl.report.analysis import Comparison, TaskDelta
from fedmtl.report.collect import RunResult, StudyData
from fedmtl.report.conflict import tasks_held
from fedmtl.report.deltas import Spread, mean_std
from fedmtl.report.plots import band_line, new_figure, save_figure
from fedmtl.report.render import Block, Heading, Paragraph, Table

KEEP, ROLL_BACK, INCONCLUSIVE = "keep federated multi-task", "roll back to single-task", "inconclusive"


def task_verdict(delta: TaskDelta) -> str:
    if delta.verdict == "worse":
        return ROLL_BACK
    if delta.verdict == "better" and not any(c.verdict == "worse" for c in delta.clients.values()):
        return KEEP
    return INCONCLUSIVE


def _pct(spread: Spread | float | None) -> str:
    if spread is None:
        return "n/a"
    if isinstance(spread, Spread):
        return "n/a" if spread.n == 0 else f"{100 * spread.mean:+.1f} ± {100 * spread.std:.1f} %"
    return f"{100 * spread:+.1f} %"


def _same_sign(delta: TaskDelta) -> str:
    values = list(delta.per_seed.values())
    if not values:
        return "n/a"
    sign = 1 if sum(values) >= 0 else -1
    return f"{sum(1 for v in values if v * sign > 0)}/{len(values)}"


def _worst_client(delta: TaskDelta) -> str:
    if not delta.clients:
        return "n/a"
    worst = min(delta.clients.values(), key=lambda c: c.spread.mean)
    flag = " (NT)" if worst.verdict == "worse" else ""
    return f"client {worst.client}: {_pct(worst.spread)}{flag}"


def verdict_rows(single_task: Sequence[Comparison]) -> list[list[str]]:
    rows = []
    for comparison in single_task:
        for name, delta in comparison.tasks.items():
            interval = (
                "n/a" if delta.test.unit is None else f"[{100 * delta.test.low:+.1f}, {100 * delta.test.high:+.1f}] %"
            )
            p = "n/a" if delta.p_adjusted is None else f"{delta.p_adjusted:.3g}"
            rows.append(
                [comparison.label, name, f"**{task_verdict(delta)}**", _pct(delta.spread), interval, p,
                 _worst_client(delta), _same_sign(delta)]
            )  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- what the runs recorded


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_groups(result: RunResult) -> dict[str, list[int]] | None:
    """The groups after the last round (``server.grouping``), or None when the run did not group."""
    rows = [r for r in _read_jsonl(result.run.dir / SERVER_FILE) if r.get("groups")]
    return rows[-1]["groups"] if rows else None


def groups_by_round(result: RunResult) -> dict[int, dict[str, list[int]]]:
    """Round -> the groups after it, for a run that grouped."""
    return {int(r["round"]): r["groups"] for r in _read_jsonl(result.run.dir / SERVER_FILE) if r.get("groups")}


def ari_against_tasks(result: RunResult, groups: dict[str, list[int]]) -> float:
    """Adjusted Rand index of ``groups`` against the clients' task sets."""
    held = tasks_held(result)
    clients = sorted(c for members in groups.values() for c in members)
    label = {c: key for key, members in groups.items() for c in members}
    return adjusted_rand_index([label[c] for c in clients], [sorted(held.get(c, ())) for c in clients])


def plot_grouping(data: StudyData, path: Path) -> Path | None:
    """Per arm that grouped: the groups' ARI against the task split and their number, per round."""
    series: dict[str, tuple[list[dict[int, float]], list[dict[int, float]]]] = {}
    for (arm, _), result in sorted(data.results.items()):
        rounds = groups_by_round(result)
        if rounds:
            aris, counts = series.setdefault(arm, ([], []))
            aris.append({r: ari_against_tasks(result, g) for r, g in rounds.items()})
            counts.append({r: float(len(g)) for r, g in rounds.items()})
    if not series:
        return None
    fig, (left, right) = new_figure(2)
    for arm, (aris, counts) in series.items():
        band_line(left, aris, arm)
        band_line(right, counts, arm)
    left.set_ylabel("ARI of the groups vs the task split")
    right.set_ylabel("groups")
    for ax in (left, right):
        ax.set_xlabel("round")
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def first_split_round(result: RunResult) -> int | None:
    rows = [r for r in _read_jsonl(result.run.dir / SERVER_FILE) if r.get("splits")]
    return int(rows[0]["round"]) if rows else None


def grouping_rows(data: StudyData) -> list[list[str]]:
    """Per arm that grouped: groups formed, ARI against the clients' task sets, round of the first split."""
    rows = []
    for arm in data.study.arms:
        counts, scores, splits, seeds = [], [], [], 0
        for (name, _), result in sorted(data.results.items()):
            groups = final_groups(result) if name == arm else None
            if groups is None:
                continue
            seeds += 1
            counts.append(float(len(groups)))
            scores.append(ari_against_tasks(result, groups))
            first = first_split_round(result)
            if first is not None:
                splits.append(float(first))
        if seeds:
            rounds = f"{mean_std(splits).mean:.1f} ({len(splits)}/{seeds} seeds split)" if splits else "never"
            rows.append([arm, _plain(mean_std(counts)), _plain(mean_std(scores)), rounds])
    return rows


def _plain(spread: Spread) -> str:
    return "n/a" if spread.n == 0 else f"{spread.mean:.2f} ± {spread.std:.2f}"


def rollback_rows(data: StudyData) -> list[list[str]]:
    """Per arm and task: the share of (client, seed) choices at the last evaluated round."""
    rows = []
    for arm in data.study.arms:
        by_task: dict[str, list[str]] = {}
        for (name, _), result in sorted(data.results.items()):
            if name != arm:
                continue
            records = _read_jsonl(result.run.dir / ROLLBACK_FILE)
            if not records:
                continue
            last = max(r["round"] for r in records)
            for r in records:
                if r["round"] == last:
                    by_task.setdefault(r["task"], []).append(r["choice"])
        for task, choices in sorted(by_task.items()):
            share = {o: choices.count(o) / len(choices) for o in ("federated", "local", "mix")}
            rows.append([arm, task, *(f"{100 * share[o]:.0f} %" for o in share), str(len(choices))])
    return rows


def affinity_means(
    data: StudyData, column: str = "task_affinity"
) -> dict[str, dict[tuple[Any, Any], tuple[float, int]]]:
    """Arm -> ordered pair (of tasks, or of clients for ``client_affinity``) -> (mean lookahead affinity
    over rounds and seeds, rows), for arms that measured it."""
    found = {}
    for arm in data.study.arms:
        values: dict[tuple[Any, Any], list[float]] = {}
        for (name, _), result in sorted(data.results.items()):
            if name != arm:
                continue
            for r in _read_jsonl(result.run.dir / SERVER_FILE):
                for pair in r.get(column) or ():
                    values.setdefault((pair["from"], pair["to"]), []).append(pair["affinity"])
        if values:
            found[arm] = {pair: (sum(v) / len(v), len(v)) for pair, v in sorted(values.items())}
    return found


def affinity_rows(data: StudyData) -> list[list[str]]:
    return [
        [arm, source, target, f"{mean:+.4f}", str(count)]
        for arm, pairs in affinity_means(data).items()
        for (source, target), (mean, count) in pairs.items()
    ]


def plot_task_affinity(data: StudyData, path: Path) -> Path | None:
    """One heatmap per arm that measured it: mean Z(row -> column) over rounds, clients and seeds."""
    return plot_affinity(affinity_means(data), path)


def plot_client_affinity(data: StudyData, path: Path) -> Path | None:
    """One heatmap per arm that measured it: mean Z(client row -> client column) over probed rounds and seeds."""
    return plot_affinity(affinity_means(data, "client_affinity"), path)


def plot_affinity(means: Mapping[str, Mapping[tuple[Any, Any], tuple[float, int]]], path: Path) -> Path | None:
    if not means:
        return None
    fig, axes = new_figure(len(means), width=4.2, height=3.6)
    for ax, (arm, pairs) in zip(axes, means.items()):
        tasks = sorted({t for pair in pairs for t in pair})
        grid = np.full((len(tasks), len(tasks)), np.nan)
        for (source, target), (mean, _) in pairs.items():
            grid[tasks.index(source), tasks.index(target)] = mean
        bound = float(np.nanmax(np.abs(grid))) or 1.0
        image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        ax.set_xlabel("to (loss measured)")
        ax.set_ylabel("from (step taken)")
        ax.set_title(arm)
        for i in range(len(tasks)) if len(tasks) <= 8 else ():  # numbers only where they fit
            for j in range(len(tasks)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:+.3f}", ha="center", va="center", fontsize="small")
        fig.colorbar(image, ax=ax)
    return save_figure(fig, path)


def balancing_of(data: StudyData) -> dict[str, str]:
    """Arm -> its loss weighting (``client.balancing``), read from one of its runs' config."""
    found = {}
    for (arm, _), result in sorted(data.results.items()):
        path = result.run.dir / CONFIG_FILE
        if arm in found or not path.exists():
            continue
        balancing = (yaml.safe_load(path.read_text()) or {}).get("client", {}).get("balancing", {})
        found[arm] = balancing.get("name", "static") if isinstance(balancing, dict) else str(balancing)
    return found


# ----------------------------------------------------------------------------- the report's blocks


def questions(data: StudyData, single_task: Sequence[Comparison]) -> list[str]:
    """Short answers from the study's own evidence (no claim without a number behind it)."""
    keep = sorted({f"{c.arm}: {t}" for c in single_task for t, d in c.tasks.items() if task_verdict(d) == KEEP})
    back = [(c, t, d) for c in single_task for t, d in c.tasks.items() if task_verdict(d) == ROLL_BACK]
    affinity = affinity_rows(data)
    balancing = balancing_of(data)
    answers = [
        "**Why these tasks share a representation.** "
        + (
            "Lookahead affinity measured on the clients (below): a positive Z(i → j) means a step on task i "
            "lowered task j's loss."
            if affinity
            else "No arm measured task affinity (client.affinity_every); see the conflict diagnostics for "
            "the gradient cosines between tasks."
        ),
        "**What shows that sharing helps.** "
        + (f"Significant gains over training alone with no client worse: {', '.join(keep)}." if keep else
           "No task is significantly better than training alone with no client worse."),
        "**How negative transfer was detected.** "
        + ("; ".join(f"{c.arm} on {t}: {_pct(d.spread)} (adj. p {d.p_adjusted:.3g})" for c, t, d in back)
           if back else "No task is significantly worse than training alone in any comparison.")
        + " (paired test over seeds against the single-task arm, corrected over tasks).",
        "**How the loss weighting was chosen.** "
        + ", ".join(f"{arm}: {name}" for arm, name in sorted(balancing.items()))
        + " (client.balancing as configured per arm; compare arms that differ only in it to choose).",
        "**What to do about a task that regresses.** "
        + ("Roll it back: train it alone, or let each client roll back per task (client.rollback, the "
           "adaptive arm; choices below)." if back else "Nothing regresses significantly here."),
    ]  # fmt: skip
    return answers


def adaptive_blocks(data: StudyData, all_comparisons: Sequence[Comparison]) -> list[Block]:
    single_task = [c for c in all_comparisons if c.single_task and c.arm not in data.study.single_task_arms]
    blocks: list[Block] = []
    if single_task:
        blocks += [
            Heading("Verdict per task"),
            Paragraph(
                "Against training alone: **keep federated multi-task** when the task is significantly better "
                "and no client holding it is significantly worse; **roll back to single-task** when it is "
                "significantly worse (negative transfer); **inconclusive** otherwise. Seeds: how many moved "
                "the task the way the mean did."
            ),
            Table(
                ["arm vs single-task", "task", "verdict", "Δ", "interval", "adj. p", "worst client", "seeds"],
                verdict_rows(single_task),
            ),  # fmt: skip
            Heading("Questions a practitioner asks", level=3),
            *(Paragraph(answer) for answer in questions(data, single_task)),
        ]
    grouping = grouping_rows(data)
    if grouping:
        blocks += [
            Heading("Groups of clients"),
            Paragraph(
                "Groups after the last round (server.grouping), mean ± std over seeds; ARI: adjusted Rand "
                "index of the final groups against the clients' task sets (1 = the task split exactly)."
            ),
            Table(["arm", "groups", "ARI vs task split", "first split (round)"], grouping),
        ]
    rollback = rollback_rows(data)
    if rollback:
        blocks += [
            Heading("Roll-back choices"),
            Paragraph("Per task at the last evaluation: the share of (client, seed) choices (client.rollback)."),
            Table(["arm", "task", "federated", "local", "mix", "choices"], rollback),
        ]
    affinity = affinity_rows(data)
    if affinity:
        blocks += [
            Heading("Task affinity"),
            Paragraph(
                "Lookahead affinity Z(from → to) = 1 − L_to(after a step on from) / L_to (TAG), mean over "
                "clients, rounds and seeds; rows: measurements."
            ),  # fmt: skip
            Table(["arm", "from", "to", "Z", "rows"], affinity),
        ]
    return blocks
