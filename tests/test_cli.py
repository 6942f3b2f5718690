"""The installed ``fedmtl`` command: ``run`` is simulate.py, ``report`` and ``compare`` read finished runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import simulate
from tests.study._study import write_study


def test_report_rerenders_a_study_from_its_run_files(tmp_path, capsys):
    root = write_study(tmp_path / "study")
    assert simulate.cli(["report", str(root)]) == 0
    assert (root / "report.md").is_file() and (root / "report.html").is_file()
    assert capsys.readouterr().out.strip() == f"report: {root / 'report.md'}"


def test_report_of_a_directory_that_is_no_study_is_one_line_and_exit_2(tmp_path, capsys):
    assert simulate.cli(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study.json" in err and str(tmp_path) in err


def test_run_is_simulate_and_unknown_commands_are_refused(capsys):
    assert simulate.cli(["run", "--print-config"]) == 0
    assert capsys.readouterr().out == (simulate.main(["--print-config"]), capsys.readouterr().out)[1]
    assert simulate.cli(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def test_the_installed_command_exists_and_runs():
    command = Path(sys.executable).parent / "fedmtl"
    assert command.is_file(), "pip install -e . must create the fedmtl console script ([project.scripts])"
    result = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "report" in result.stdout


def test_compare_puts_studies_and_runs_side_by_side(tmp_path, capsys):
    first, second = write_study(tmp_path / "a" / "study"), write_study(tmp_path / "b" / "study")
    run = first / "arms" / "fed_mtl" / "seed-1"
    tasks = [{"task": "cls", "metric": "accuracy", "higher_is_better": True},
             {"task": "reg", "metric": "mse", "higher_is_better": False}]  # fmt: skip
    (run / "summary.json").write_text(json.dumps({"seed": 1, "tasks": tasks}))
    out = tmp_path / "cmp"
    assert simulate.cli(["compare", str(first), str(second), str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0]
    # equal study names: the parent folder tells them apart
    assert (
        header
        == "| task | metric | a/study/fed_mtl | a/study/local_stl | b/study/fed_mtl | b/study/local_stl | seed-1 |"
    )
    cls = next(line for line in printed.splitlines() if line.startswith("| cls "))
    # fed_mtl cls: 0.65, 0.66, 0.67 over seeds (tests/study/_study.py); the run is seed 1 alone; best in bold
    assert "| **0.6600 ± 0.0100 (3)** |" in cls and cls.endswith("| **0.6600 ± 0.0000 (1)** |")
    reg = next(line for line in printed.splitlines() if line.startswith("| reg "))
    assert "| **1.0000 ± 0.0000 (3)** |" in reg  # local_stl: lower mse is better
    for name in ("compare.md", "compare.html", "plots/learning_curves.png"):
        assert (out / name).is_file(), name
    assert printed.strip().endswith(f"comparison: {out / 'compare.md'}")


def test_compare_refuses_what_it_cannot_read_in_one_line(tmp_path, capsys):
    assert simulate.cli(["compare", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a study directory" in err and str(tmp_path) in err
    run = write_study(tmp_path / "s", arms=("fed_mtl",)) / "arms" / "fed_mtl" / "seed-0"
    assert simulate.cli(["compare", str(run.parent.parent.parent)]) == 2
    assert "nothing to compare with" in capsys.readouterr().err
