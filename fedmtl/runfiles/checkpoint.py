"""Checkpoints: the server's state in the run directory, clients' private state in round-versioned files.

Server: ``checkpoint.pt`` (encoder, aggregator/optimizer state, sampling RNG, round), replaced
atomically. Clients keep their own (:mod:`fedmtl.local.state_store`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmtl.core.errors import FederationError
from fedmtl.core.files import atomic_write, read_rows, write_rows
from fedmtl.core.layout import CHECKPOINT_FILE
from fedmtl.runfiles.rundir import RunDirectory


@dataclass(frozen=True)
class ServerCheckpoint:
    server_round: int
    state: dict[str, Any]  # the server algorithm's state: every cohort's encoder, optimizer, sampler, heads


def save_server_checkpoint(run: RunDirectory, checkpoint: ServerCheckpoint) -> None:
    payload = {"round": checkpoint.server_round, "server": checkpoint.state}
    atomic_write(run.path / CHECKPOINT_FILE, lambda tmp: torch.save(payload, tmp))


def load_server_checkpoint(run: RunDirectory) -> ServerCheckpoint | None:
    path = run.path / CHECKPOINT_FILE
    if not path.exists():
        return None
    raw = torch.load(path, weights_only=False)
    if "server" not in raw:
        raise FederationError(f"{path} was written by an older fedmtl (before cohorts): start the run again")
    return ServerCheckpoint(raw["round"], raw["server"])


def truncate_rows_after(path: Path, server_round: int) -> list[dict[str, Any]]:
    """Keep only rows of rounds <= ``server_round`` (a resumed run rewrites the later ones)."""
    if not path.exists():
        return []
    kept = [row for row in read_rows(path) if row["round"] <= server_round]
    write_rows(path, kept)
    return kept
