"""The run directory: resolved config, tidy metrics, server diagnostics, final encoder, summary.

Files are appended row by row (metrics) or replaced atomically (everything else), so an
interrupted run leaves every file it wrote valid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
import yaml

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import atomic_write, atomic_write_text
from fedmtl.core.layout import CONFIG_FILE, ENCODER_FILE


@dataclass(frozen=True)
class RunDirectory:
    path: Path
    metrics_format: str = "jsonl"
    tensorboard: bool = False  # also mirror the recorded rows to TensorBoard (output.tensorboard)

    @classmethod
    def create(cls, cfg: ExperimentConfig) -> RunDirectory:
        """A new directory (never an existing one: nothing already written is overwritten)."""
        if cfg.output.run_dir:
            path = Path(cfg.output.run_dir)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(cfg.output.dir) / f"{stamp}-{cfg.name}"
            suffix = 1
            while path.exists():
                suffix += 1
                path = Path(cfg.output.dir) / f"{stamp}-{cfg.name}-{suffix}"
        if path.exists() and any(path.iterdir()):
            raise ConfigError("output.run_dir", f"{path} already exists and is not empty; choose another directory")
        run = cls(path, cfg.output.metrics_format, cfg.output.tensorboard)
        run.check_writers()  # before anything is written
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError("output.dir", f"cannot create run directory {path}: {err.strerror}") from None
        atomic_write_text(path / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return run

    @classmethod
    def open(cls, path: str | Path) -> tuple[RunDirectory, ExperimentConfig]:
        """An existing run directory and its resolved config (for --resume)."""
        from fedmtl.config.loading import build_config

        directory = Path(path)
        config_file = directory / CONFIG_FILE
        if not config_file.is_file():
            raise ConfigError("--resume", f"{directory} is not a run directory (no {CONFIG_FILE})")
        cfg = build_config(yaml.safe_load(config_file.read_text()))
        run = cls(directory, cfg.output.metrics_format, cfg.output.tensorboard)
        run.check_writers()
        return run, cfg

    def check_writers(self) -> None:
        """Optional writers need their packages (checked where runs are written, not on every client)."""
        if self.tensorboard and find_spec("tensorboard") is None:
            raise ConfigError(
                "output.tensorboard", 'is true but the tensorboard package is missing: pip install -e ".[tensorboard]"'
            )

    @property
    def metrics_path(self) -> Path:
        return self.path / f"metrics.{self.metrics_format}"

    def save_encoder(self, state: Mapping[str, Any]) -> None:
        """``encoder.pt``: a state dict, or (several cohorts) cohort key -> state dict."""
        atomic_write(self.path / ENCODER_FILE, lambda tmp: torch.save(dict(state), tmp))

    def write_json(self, name: str, payload: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(payload, indent=2, sort_keys=False) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)
