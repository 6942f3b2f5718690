"""Checkpoints: the server's state in the run directory, clients' private state in round-versioned files.

Server: ``checkpoint.pt`` (encoder, aggregator/optimizer state, sampling RNG, round), replaced
atomically. Clients: ``<state_dir>/client-<id>/round-<r>.pt`` after every round they train, so a
run resumed from checkpoint round c gives each client its newest state at or before c: exactly
what it held when the checkpoint was written. Versions older than that are pruned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmtl.core.files import atomic_write, read_rows, write_rows
from fedmtl.core.layout import CHECKPOINT_FILE
from fedmtl.runfiles.rundir import RunDirectory

_VERSION = re.compile(r"round-(\d+)\.pt$")


@dataclass(frozen=True)
class ServerCheckpoint:
    server_round: int
    updater: dict[str, Any]
    sampler: tuple
    heads: dict[str, Any] | None = None  # federated heads (fed_full design only)


def save_server_checkpoint(run: RunDirectory, checkpoint: ServerCheckpoint) -> None:
    payload = {
        "round": checkpoint.server_round,
        "updater": checkpoint.updater,
        "sampler": checkpoint.sampler,
        "heads": checkpoint.heads,
    }
    atomic_write(run.path / CHECKPOINT_FILE, lambda tmp: torch.save(payload, tmp))


def load_server_checkpoint(run: RunDirectory) -> ServerCheckpoint | None:
    path = run.path / CHECKPOINT_FILE
    if not path.exists():
        return None
    raw = torch.load(path, weights_only=False)
    return ServerCheckpoint(raw["round"], raw["updater"], raw["sampler"], raw.get("heads"))


def truncate_rows_after(path: Path, server_round: int) -> list[dict[str, Any]]:
    """Keep only rows of rounds <= ``server_round`` (a resumed run rewrites the later ones)."""
    if not path.exists():
        return []
    kept = [row for row in read_rows(path) if row["round"] <= server_round]
    write_rows(path, kept)
    return kept


class ClientStateStore:
    """One client's private state, versioned by the round it was written after."""

    def __init__(self, directory: str | Path, client_id: int) -> None:
        self.directory = Path(directory) / f"client-{client_id}"

    def versions(self) -> list[int]:
        if not self.directory.exists():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _VERSION.search(p.name)))

    def save(self, server_round: int, state: dict[str, torch.Tensor], durable_round: int) -> None:
        """Write the state after ``server_round``; prune versions no checkpoint after ``durable_round`` needs."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.directory / f"round-{server_round:06d}.pt", lambda tmp: torch.save(state, tmp))
        needed = [v for v in self.versions() if v <= durable_round]
        floor = needed[-1] if needed else 0
        for version in self.versions():
            if version < floor:
                (self.directory / f"round-{version:06d}.pt").unlink(missing_ok=True)

    def load(self, at_most_round: int) -> dict[str, torch.Tensor] | None:
        candidates = [v for v in self.versions() if v <= at_most_round]
        if not candidates:
            return None
        return torch.load(self.directory / f"round-{candidates[-1]:06d}.pt", weights_only=True)
