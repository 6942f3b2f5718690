"""Where everything is written: the one place that names run files, study and sweep files and folders.

A run directory::

    config.yaml  metrics.jsonl|metrics.csv  clients.jsonl  server.jsonl  encoder.pt  summary.json  summary.md
    checkpoint.pt  client_state/client-<id>/round-<r>.pt  tensorboard/

A study directory: ``config.yaml  study.json  report.md  report.html  summary.json  plots/`` and one run
directory per arm and seed, ``arms/<arm>/seed-<seed>/`` (an arm with a pretraining phase also writes that
phase's run to ``pretrain/arms/<arm>/seed-<seed>/``). A sweep directory: ``config.yaml  sweep.json
sweep.md  sweep.csv  sweep.png`` and one study per grid point, ``points/<i>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

MetricsFormat = Literal["jsonl", "csv"]

# a run
CONFIG_FILE = "config.yaml"
SERVER_FILE = "server.jsonl"
CLIENTS_FILE = "clients.jsonl"
ROLLBACK_FILE = "rollback.jsonl"  # client.rollback: each evaluated client's choice per task, with its evidence
ENCODER_FILE = "encoder.pt"
PRETRAIN_DIR = "pretrain"  # <study>/pretrain/arms/<arm>/seed-<seed>: an arm's pretraining phase
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
CHECKPOINT_FILE = "checkpoint.pt"
CLIENT_STATE_DIR = "client_state"
TENSORBOARD_DIR = "tensorboard"
METRICS_FORMATS: tuple[MetricsFormat, ...] = ("jsonl", "csv")

# a study, a sweep, a comparison
STUDY_FILE = "study.json"
SWEEP_FILE = "sweep.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"
SWEEP_MD = "sweep.md"
SWEEP_CSV = "sweep.csv"
SWEEP_PNG = "sweep.png"
COMPARE_MD = "compare.md"
COMPARE_HTML = "compare.html"


def metrics_file(metrics_format: MetricsFormat) -> str:
    """``metrics.jsonl`` or ``metrics.csv`` (``output.metrics_format``)."""
    return f"metrics.{metrics_format}"


def find_metrics_file(run_dir: Path) -> Path:
    """A finished run's metrics table, whichever format it was written in (``metrics.jsonl`` when neither exists)."""
    for metrics_format in METRICS_FORMATS:
        path = run_dir / metrics_file(metrics_format)
        if path.is_file():
            return path
    return run_dir / metrics_file("jsonl")


def arm_run_dir(arm: str, seed: int) -> str:
    """A study's run directory of one arm and seed, relative to the study directory."""
    return f"arms/{arm}/seed-{seed}"


def sweep_point_dir(index: int) -> str:
    """A sweep's study directory of grid point ``index``, relative to the sweep directory."""
    return f"points/{index}"


def client_state_dir(state_dir: Path | str, participant: int) -> Path:
    """Where participant ``participant`` keeps its private state between rounds."""
    return Path(state_dir) / f"client-{participant}"
