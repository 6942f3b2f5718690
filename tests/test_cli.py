"""The installed ``fedmtl`` command: ``run`` is simulate.py, ``report`` re-renders a study without running it."""

from __future__ import annotations

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
