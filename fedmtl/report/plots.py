"""The study's figures as PNG files, drawn on matplotlib's Agg canvas (no display, no pyplot state).

Each function returns the path it wrote, or None when the study holds no data for that figure.
Curves show the mean over seeds with a shaded band of one sample standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedmtl.report.analysis import Comparison
from fedmtl.report.collect import StudyData
from fedmtl.report.deltas import mean_std

DPI = 110
FLAG_COLOR = "#c0392b"


def new_figure(panels: int, width: float = 5.0, height: float = 3.4, columns: int = 3) -> tuple[Figure, list[Axes]]:
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)  # explicit Agg canvas: rendering never touches a display backend
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return fig, axes


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _band(series: Sequence[Mapping[int, float]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Rounds present in any series; mean and std over the series that have each round (NaN values skipped)."""
    rounds = sorted({r for s in series for r in s})
    spreads = [mean_std(s[r] for s in series if r in s and s[r] is not None and not math.isnan(s[r])) for r in rounds]
    return rounds, np.array([s.mean for s in spreads]), np.array([s.std for s in spreads])


def band_line(ax: Axes, series: Sequence[Mapping[int, float]], label: str) -> None:
    rounds, mean, std = _band(series)
    (line,) = ax.plot(rounds, mean, marker="o", markersize=3, label=label)
    ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds


def plot_learning_curves(data: StudyData, path: Path) -> Path | None:
    """One panel per task: the eval headline metric per round, one line per arm."""
    tasks = [t for t in data.study.tasks if any(data.curves(arm, t.name) for arm in data.study.arms)]
    if not tasks:
        return None
    fig, axes = new_figure(len(tasks))
    for ax, task in zip(axes, tasks):
        for arm in data.study.arms:
            curves = data.curves(arm, task.name)
            if curves:
                band_line(ax, list(curves.values()), arm)
        ax.set_title(f"{task.name} ({'higher' if task.higher_is_better else 'lower'} is better)")
        ax.set_xlabel("round")
        ax.set_ylabel(task.metric)
        ax.legend(fontsize="small")
    return save_figure(fig, path)


VERDICT_COLORS = {"worse": FLAG_COLOR, "better": "#27ae60", "no difference": "#555555", None: "#aaaaaa"}


def _forest_rows(comparison: Comparison, group: str) -> tuple[float, float, float, str | None, float | None]:
    """(mean, low, high, verdict, adjusted p) of one pair for a task or for Delta_m (in %)."""
    if group == "Δm":
        test = comparison.delta_m_test
        return 100 * comparison.delta_m.mean, 100 * test.low, 100 * test.high, None, test.p_value
    delta = comparison.tasks[group]  # the tested mean sits inside its interval (over seeds, or clients)
    mean = delta.test.mean if delta.test.unit else delta.spread.mean
    return 100 * mean, 100 * delta.test.low, 100 * delta.test.high, delta.verdict, delta.p_adjusted


def plot_forest(comparisons: Sequence[Comparison], tasks: Sequence[str], path: Path) -> Path | None:
    """The headline figure: one panel per task and one for Delta_m; one row per compared pair.

    Each row: the mean paired relative delta (%) over seeds and its t-interval; the marker is red when
    the arm is significantly worse than its baseline, green when better (adjusted p), grey otherwise;
    the adjusted p (unadjusted for Delta_m) is printed at the right edge.
    """
    if not comparisons or not any(c.tasks[t].spread.n for c in comparisons for t in tasks):
        return None
    groups = [*tasks, "Δm"]
    labels = [c.label for c in comparisons]
    height = 1.4 + 0.36 * len(comparisons)
    columns = min(len(groups), 3)
    fig, axes = new_figure(len(groups), width=4.6, height=height, columns=columns)
    y = np.arange(len(comparisons))[::-1]
    for index, (ax, group) in enumerate(zip(axes, groups)):
        for row, comparison in zip(y, comparisons):
            mean, low, high, verdict, p_value = _forest_rows(comparison, group)
            color = VERDICT_COLORS[verdict] if group != "Δm" else "#1f4e79"
            if not math.isnan(low):
                ax.hlines(row, low, high, color=color, linewidth=1.6)
            if not math.isnan(mean):
                ax.plot([mean], [row], marker="o" if group != "Δm" else "D", color=color, markersize=5)
            if p_value is not None:
                ax.annotate(
                    f"p={p_value:.2g}",
                    (0.99, row),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="center",
                    fontsize="x-small",
                    color=color,
                )
        low_x, high_x = ax.get_xlim()
        ax.set_xlim(low_x, high_x + 0.3 * (high_x - low_x))  # room for the p-values inside the panel
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, labels if index % columns == 0 else [""] * len(labels), fontsize="small")
        ax.set_ylim(-0.7, len(comparisons) - 0.3)
        ax.set_xlabel("relative delta (%), > 0: arm better")
        ax.set_title(group if group != "Δm" else "Δm (mean over tasks)")
        ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


@dataclass(frozen=True)
class _PairGrid:
    pairs: list[tuple[int, int]]
    rounds: list[int]
    values: np.ndarray  # [pairs, rounds], mean over seeds, NaN where the pair did not meet


def _pair_grid(data: StudyData, arm: str) -> _PairGrid | None:
    """Mean over seeds of each client pair's update cosine, per round."""
    samples: dict[tuple[tuple[int, int], int], list[float]] = {}
    for result in data.arm_results(arm):
        for row in result.server:
            if row.cosines is None:
                continue
            clients = row.clients or tuple(range(row.cosines.shape[0]))
            for (i, a), (j, b) in combinations(enumerate(clients), 2):
                value = row.cosines[i, j]
                if not math.isnan(value):
                    samples.setdefault(((min(a, b), max(a, b)), row.round), []).append(float(value))
    if not samples:
        return None
    pairs = sorted({pair for pair, _ in samples})
    rounds = sorted({r for _, r in samples})
    values = np.full((len(pairs), len(rounds)), np.nan)
    for (pair, r), found in samples.items():
        values[pairs.index(pair), rounds.index(r)] = sum(found) / len(found)
    return _PairGrid(pairs, rounds, values)


def plot_client_cosines(data: StudyData, path: Path) -> Path | None:
    """Heatmap per federated arm: cosine between two clients' updates (rows: client pairs) per round."""
    grids = {arm: grid for arm in data.study.arms if (grid := _pair_grid(data, arm)) is not None}
    if not grids:
        return None
    fig, axes = new_figure(
        len(grids), width=6.0, height=max(2.5, 0.25 * max(len(g.pairs) for g in grids.values())), columns=1
    )
    image = None
    for ax, (arm, grid) in zip(axes, grids.items()):
        image = ax.imshow(grid.values, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{arm}: client-update cosine per pair (mean over seeds)")
        ax.set_xlabel("round")
        ax.set_ylabel("client pair")
        step = max(1, len(grid.rounds) // 12)
        ax.set_xticks(range(0, len(grid.rounds), step), [str(r) for r in grid.rounds[::step]])
        if len(grid.pairs) <= 40:
            ax.set_yticks(range(len(grid.pairs)), [f"{a}-{b}" for a, b in grid.pairs], fontsize="x-small")
        else:
            ax.set_yticks([])
    fig.colorbar(image, ax=axes, label="cosine", shrink=0.8)  # type: ignore[arg-type]  # set in the loop above
    return save_figure(fig, path)


def plot_conflict_fraction(data: StudyData, path: Path) -> Path | None:
    """Fraction of conflicting client-update pairs per round, one line per arm."""
    series = {
        arm: [
            {row.round: float(row.conflict_fraction) for row in result.server if row.conflict_fraction is not None}
            for result in data.arm_results(arm)
        ]
        for arm in data.study.arms
    }
    series = {arm: [s for s in seeds if s] for arm, seeds in series.items()}
    series = {arm: seeds for arm, seeds in series.items() if seeds}
    if not series:
        return None
    fig, (ax,) = new_figure(1, width=6.0)
    for arm, seeds in series.items():
        band_line(ax, seeds, arm)
    ax.set_xlabel("round")
    ax.set_ylabel("conflict fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Client-update pairs with negative cosine")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def _task_cosine_series(data: StudyData, arm: str, pair: tuple[str, str]) -> list[dict[int, float]]:
    """Per seed: round -> mean over clients of the task-gradient cosine of ``pair``."""
    series = []
    for result in data.arm_results(arm):
        by_round: dict[int, list[float]] = {}
        for row in result.task_cosines:
            if tuple(sorted(row.tasks)) == pair and row.cosine is not None:
                by_round.setdefault(row.round, []).append(float(row.cosine))
        if by_round:
            series.append({r: sum(v) / len(v) for r, v in by_round.items()})
    return series


def plot_task_cosines(data: StudyData, path: Path) -> Path | None:
    """One panel per task pair: cosine of the two tasks' gradients inside clients per round, one line per arm."""
    pairs = sorted({tuple(sorted(row.tasks)) for r in data.results.values() for row in r.task_cosines})
    panels = {}
    for pair in pairs:
        lines = {arm: s for arm in data.study.arms if (s := _task_cosine_series(data, arm, pair))}  # type: ignore[arg-type]
        if lines:
            panels[pair] = lines
    if not panels:
        return None
    fig, axes = new_figure(len(panels))
    for ax, (pair, lines) in zip(axes, panels.items()):
        for arm, series in lines.items():
            band_line(ax, series, arm)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"{pair[0]} vs {pair[1]}")
        ax.set_xlabel("round")
        ax.set_ylabel("task-gradient cosine (client mean)")
        ax.legend(fontsize="small")
    return save_figure(fig, path)


@dataclass(frozen=True)
class SweepSeries:
    """One line of the sweep plot: Delta_m and worst-task delta (mean, std over seeds) per x value."""

    label: str
    x: list[object]
    delta_m: list[tuple[float, float]]
    worst: list[tuple[float, float]]


def _is_numeric(values: Sequence[object]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _errorbar_line(
    ax: Axes,
    x: Sequence[object],
    values: Sequence[tuple[float, float]],
    label: str,
    categories: list[str] | None,
    scale: float,
) -> None:
    """One mean ± std line against the swept value (numeric x sorted; else category positions)."""
    points = list(zip(x, values)) if categories is not None else sorted(zip(x, values), key=lambda p: p[0])  # type: ignore[arg-type,return-value]
    xs = [categories.index(str(p[0])) if categories is not None else p[0] for p in points]
    ax.errorbar(
        xs,  # type: ignore[arg-type]
        [scale * m for _, (m, _) in points],
        yerr=[scale * s for _, (_, s) in points],
        marker="o",
        capsize=3,
        label=label,
    )


def _swept_axis(ax: Axes, x_label: str, y_label: str, title: str, categories: list[str] | None) -> None:
    ax.axhline(0, color="black", linewidth=0.8)
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.margins(x=0.1)
    ax.legend(fontsize="small")


def _categories(values: Sequence[object]) -> list[str] | None:
    """None when every swept value is a number (a numeric x axis), else the values in order."""
    return None if _is_numeric(values) else list(dict.fromkeys(str(v) for v in values))


def plot_sweep(series: Sequence[SweepSeries], x_label: str, path: Path) -> Path | None:
    """Delta_m and worst-task delta (%) against the swept value; numeric x when every value is a number."""
    if not series:
        return None
    categories = _categories([v for s in series for v in s.x])
    fig, axes = new_figure(2, width=5.5, columns=2)
    for ax, attribute, title in zip(axes, ("delta_m", "worst"), ("Δm", "worst-task delta")):
        for line in series:
            _errorbar_line(ax, line.x, getattr(line, attribute), line.label, categories, 100.0)
        _swept_axis(ax, x_label, f"{title} (%, mean ± std over seeds)", f"{title} vs {x_label}", categories)
    return save_figure(fig, path)


@dataclass(frozen=True)
class ConflictSeries:
    """One line of the sweep's conflict figure: a diagnostic (mean, std over seeds) per swept value."""

    label: str
    x: list[object]
    values: list[tuple[float, float]]


def plot_sweep_conflict(series: Sequence[ConflictSeries], x_label: str, arm: str, path: Path) -> Path | None:
    """In-client task-gradient cosines and the client-update cosine against the swept value."""
    if not series:
        return None
    categories = _categories([v for s in series for v in s.x])
    fig, axes = new_figure(1, width=6.0, columns=1)
    for line in series:
        _errorbar_line(axes[0], line.x, line.values, line.label, categories, 1.0)
    _swept_axis(
        axes[0], x_label, "cosine (mean ± std over seeds)", f"{arm}: gradient conflict vs {x_label}", categories
    )
    return save_figure(fig, path)


def plot_privacy_utility(series: Sequence[SweepSeries], path: Path) -> Path | None:
    """Each task's delta against local training (%) over the epsilon spent, one line per arm and task
    (``SweepSeries.delta_m`` holds the task's delta here); epsilon on a log axis. Lines labelled
    ``arm · task · setting`` go to one panel per setting (what else the sweep varied)."""
    if not series:
        return None
    panels: dict[str, list[SweepSeries]] = {}
    for line in series:
        parts = line.label.split(" · ", 2)
        panels.setdefault(parts[2] if len(parts) == 3 else "", []).append(line)
    fig, axes = new_figure(len(panels), width=6.5, height=4.2, columns=2)
    for ax, (setting, lines) in zip(axes, panels.items()):
        for line in lines:
            label = " · ".join(line.label.split(" · ", 2)[:2])
            _errorbar_line(ax, line.x, line.delta_m, label, None, 100.0)
        title = f"privacy–utility, {setting}" if setting else "privacy–utility"
        _swept_axis(ax, "epsilon (delta as configured)", "Δ vs local training (%, mean ± std)", title, None)
        ax.set_xscale("log")
    return save_figure(fig, path)
