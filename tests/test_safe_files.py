"""Nothing executes from a file: a checkpoint carrying a pickle payload is refused on resume, in one line
naming the file, without running the payload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from fedmtl.core.layout import CHECKPOINT_FILE
from tests.helpers import ROOT, TINY_OVERRIDES, set_args

MARKER_NAME = "payload-ran"


class Payload:
    """Unpickling it would create ``marker``: proof that the file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, simulate_env):
    run_dir = tmp_path / "run"
    finished = subprocess.run(
        [
            sys.executable,
            "simulate.py",
            *set_args([*TINY_OVERRIDES, "rounds=1", "simulation.engine=inprocess"]),
            "--set",
            f"output.run_dir={run_dir}",
        ],
        cwd=ROOT,
        env=simulate_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    marker = tmp_path / MARKER_NAME
    checkpoint = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    checkpoint["server"]["planted"] = Payload(marker)
    torch.save(checkpoint, run_dir / CHECKPOINT_FILE)

    resumed = subprocess.run(
        [sys.executable, "simulate.py", "--resume", str(run_dir)],
        cwd=ROOT,
        env=simulate_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode != 0
    assert not marker.exists(), "the payload ran"
    error_lines = [line for line in resumed.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1 and CHECKPOINT_FILE in error_lines[0] and "refusing" in error_lines[0]
    assert "Traceback" not in resumed.stderr
