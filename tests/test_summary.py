"""The run summary: example-weighted curves per split, built without keeping every evaluation row."""

from __future__ import annotations

import pytest

from fedmtl.data.task_kinds import TaskSpec
from fedmtl.runfiles.summary import EvalCurves, task_summary

SPECS = (TaskSpec("cls", "classification", 2), TaskSpec("reg", "regression", 1))


def row(split: str, round_: int, client: int, task: str, n: int, **metrics: float | None) -> dict:
    return {"split": split, "round": round_, "client": client, "task": task, "num_examples": n, **metrics}


def test_each_split_has_its_own_example_weighted_curve() -> None:
    curves = EvalCurves(SPECS)
    curves.add(
        [
            row("eval", 0, 0, "cls", 10, accuracy=0.5),
            row("eval", 0, 1, "cls", 30, accuracy=0.7),
            row("eval", 2, 0, "cls", 10, accuracy=0.6),
            row("eval", 2, 1, "cls", 30, accuracy=1.0),
            row("personal", 2, 0, "cls", 10, accuracy=0.0),  # a personalised copy: never mixed into eval
            row("eval", 2, 0, "reg", 5, mse=None, r2=None),  # no headline value: skipped
            row("eval", 2, 0, "unknown", 5, accuracy=1.0),  # not a task of the run: skipped
        ]
    )
    assert curves.curve("eval", "cls") == {0: pytest.approx(0.65), 2: pytest.approx(0.9)}
    assert curves.curve("personal", "cls") == {2: 0.0}
    assert curves.curve("eval", "reg") == {}
    assert curves.clients("eval", "cls") == 2 and curves.clients("personal", "cls") == 1

    [cls] = task_summary(curves, SPECS, "eval")
    assert (cls["task"], cls["clients"], cls["round_first"], cls["round_final"]) == ("cls", 2, 0, 2)
    assert cls["value_first"] == pytest.approx(0.65) and cls["value_final"] == pytest.approx(0.9)
    assert cls["improved"] and cls["best_round"] == 2
    [personal] = task_summary(curves, SPECS, "personal")
    assert personal["value_final"] == 0.0 and not task_summary(EvalCurves(SPECS), SPECS, "eval")


def test_lower_is_better_picks_the_smallest_error_as_best() -> None:
    curves = EvalCurves(SPECS)
    curves.add([row("eval", r, 0, "reg", 4, mse=value) for r, value in ((0, 2.0), (1, 0.5), (2, 0.8))])
    [reg] = task_summary(curves, SPECS, "eval")
    assert reg["best_round"] == 1 and reg["value_best"] == 0.5 and reg["improved"]
