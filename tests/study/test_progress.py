"""Progress lines of a study: runs done, time per run, time left, and the finished run's metrics."""

from __future__ import annotations

import json
from pathlib import Path

from fedmtl.experiments.progress import Progress, format_duration, run_line


def test_durations_read_naturally() -> None:
    assert [format_duration(s) for s in (0.4, 42, 185, 3 * 3600 + 7 * 60 + 20)] == [
        "0 s",
        "42 s",
        "3 min 05 s",
        "3 h 07 min",
    ]


def test_time_left_is_the_mean_time_per_run_times_the_runs_left() -> None:
    progress = Progress(total=5)
    assert progress.line() == "[0/5]"
    progress.finished(10.0)
    progress.finished(20.0)
    assert progress.line() == "[2/5] 15.0 s/run, about 45 s left"
    for _ in range(3):
        progress.finished(15.0)
    assert progress.line() == "[5/5] 15.0 s/run, done"


def test_run_line_names_the_final_metric_of_every_task(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    tasks = [
        {"task": "cls", "metric": "accuracy", "value_final": 0.66},
        {"task": "reg", "metric": "mse", "value_final": 1.28},
    ]
    (run / "summary.json").write_text(json.dumps({"name": "x", "tasks": tasks}))
    assert run_line("fed_mtl", 1, run) == "fed_mtl seed 1: cls accuracy 0.66, reg mse 1.28"
    assert run_line("x", 0, tmp_path / "missing").startswith("x seed 0: no summary (")
