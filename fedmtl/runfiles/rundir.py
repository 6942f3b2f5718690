"""The run directory: resolved config, tidy metrics, server diagnostics, final encoder, summary.

Files are appended row by row (metrics) or replaced atomically (everything else), so an
interrupted run leaves every file it wrote valid.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
import yaml

from fedmtl.config.errors import ConfigError
from fedmtl.config.experiment import ExperimentConfig

CONFIG_FILE = "config.yaml"
SERVER_FILE = "server.jsonl"
CLIENTS_FILE = "clients.jsonl"
ENCODER_FILE = "encoder.pt"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a sibling temporary file, then rename it over ``path``: readers (and a resumed run
    after a crash) see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    write(tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


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
        from fedmtl.config.experiment import build_config

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

    def save_encoder(self, state: Mapping[str, torch.Tensor]) -> None:
        atomic_write(self.path / ENCODER_FILE, lambda tmp: torch.save(dict(state), tmp))

    def write_json(self, name: str, payload: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(payload, indent=2, sort_keys=False) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)


class RowWriter:
    """Append-only tidy table in JSONL or CSV (fixed columns, header written once)."""

    def __init__(self, path: Path, columns: Sequence[str], csv_format: bool | None = None) -> None:
        """``csv_format``: default from the suffix (``.csv``)."""
        self.path = path
        self.columns = tuple(columns)
        self.csv = path.suffix == ".csv" if csv_format is None else csv_format
        if self.csv and not path.exists():
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        with self.path.open("a", newline="") as handle:
            if self.csv:
                writer = csv.writer(handle)
                for row in rows:
                    writer.writerow(["" if row.get(c) is None else row.get(c) for c in self.columns])
            else:
                for row in rows:
                    handle.write(json.dumps({c: row.get(c) for c in self.columns}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace a metrics table atomically with ``rows`` (same format as :class:`RowWriter`)."""
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            columns = next(csv.reader(handle))
        atomic_write(path, lambda tmp: RowWriter(tmp, columns, csv_format=True).write(rows))
        return
    atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(dict(row)) + "\n" for row in rows)))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Read a metrics table back (CSV values converted to numbers where possible)."""
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
