"""Checkpoints: the server's state in the run directory, clients' private state in round-versioned files.

Server: ``checkpoint.pt`` (encoder, aggregator/optimizer state, sampling RNG, round), replaced
atomically. Clients keep their own (:mod:`fedmtl.local.state_store`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmtl.core.errors import ConfigError, FederationError
from fedmtl.core.files import atomic_write, keep_rows
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
    try:  # tensors and plain containers only: a checkpoint from elsewhere cannot run code through pickle
        raw = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:  # torch names what it refused on a line "Unsupported global: ..."
        found = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        raise ConfigError(
            "--resume",
            f"{path} holds more than tensors and plain values; refusing to load it"
            + (f" ({found[0].rstrip('.')})" if found else ""),
        ) from None
    if not isinstance(raw, dict) or "server" not in raw:
        raise FederationError(f"{path} was written by an older fedmtl (before cohorts): start the run again")
    return ServerCheckpoint(raw["round"], raw["server"])


def truncate_rows_after(path: Path, server_round: int) -> int:
    """Keep only rows of rounds <= ``server_round`` (a resumed run rewrites the later ones), read and
    written one at a time: at 1,000 clients a round, ``server.jsonl`` grows by 10 MB a round (every
    pair's cosine), and reading it whole took the driver of a resumed 100,000-client run to 2.6 GB."""
    if not path.exists():
        return 0
    return keep_rows(path, lambda row: row["round"] <= server_round)
