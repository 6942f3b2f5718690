"""Progress of a study or sweep: runs done out of the total, time left, one line per finished run."""

from __future__ import annotations

import json
from pathlib import Path

from fedmtl.core.layout import SUMMARY_JSON


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 07 min``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Runs finished out of ``total``; the time left is the mean time per run so far times the runs left.

    Runs finished before a resume are not counted in ``total``: the estimate covers this process's work.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.seconds = 0.0

    def finished(self, seconds: float) -> None:
        self.done += 1
        self.seconds += seconds

    def per_run(self) -> float:
        return self.seconds / self.done if self.done else float("nan")

    def line(self) -> str:
        """``[5/24] 7.2 s/run, about 2 min 17 s left``."""
        head = f"[{self.done}/{self.total}]"
        if not self.done:
            return head
        left = max(self.total - self.done, 0)
        tail = "done" if not left else f"about {format_duration(left * self.per_run())} left"
        return f"{head} {self.per_run():.1f} s/run, {tail}"


def run_line(arm: str, seed: int, run_dir: Path) -> str:
    """``pcgrad seed 1: rich mse 0.1234, poor mse 0.5678``: the run's final headline metric per task
    (from its ``summary.json``, which every run writes)."""
    path = run_dir / SUMMARY_JSON
    try:
        tasks = json.loads(path.read_text())["tasks"]
    except (OSError, ValueError, KeyError) as err:
        return f"{arm} seed {seed}: no summary ({path}: {type(err).__name__})"
    values = ", ".join(f"{t['task']} {t['metric']} {t['value_final']:.4g}" for t in tasks)
    return f"{arm} seed {seed}: {values or 'no eval rows'}"
