"""A participant's private state on disk, versioned by the round it was written after.

Written after every round it trains (``<state_dir>/client-<participant>/round-<r>.pt``), so a run
resumed from checkpoint round c gives each participant its newest state at or before c: exactly what it
held when the checkpoint was written; a restarted SuperNode with the same state directory continues
with its private heads. Versions older than that are pruned.

A state directory outlives runs (a SuperNode's ``state-dir``), so the store is claimed by one run at a
time: ``run_key`` (the run directory's name, the same when a run is resumed) is written beside the
versions, a run with another key clears them before it saves, and a load for another run finds nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fedmtl.core.files import atomic_write, atomic_write_text
from fedmtl.core.layout import client_state_dir

_VERSION = re.compile(r"round-(\d+)\.pt$")


class ClientStateStore:
    """One client's private state, versioned by the round it was written after."""

    def __init__(self, directory: str | Path, participant: int, run_key: str = "") -> None:
        self.directory = client_state_dir(directory, participant)
        self.run_key = run_key

    @property
    def _owner(self) -> Path:
        return self.directory / "run"

    def _mine(self) -> bool:
        """Whether the versions here were written by this store's run (always, without a run key)."""
        if not self.run_key:
            return True
        return self._owner.is_file() and self._owner.read_text() == self.run_key

    def versions(self) -> list[int]:
        if not self.directory.exists():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _VERSION.search(p.name)))

    def save(self, server_round: int, state: dict[str, torch.Tensor], durable_round: int) -> None:
        """Write the state after ``server_round``; prune versions no checkpoint after ``durable_round`` needs."""
        self.directory.mkdir(parents=True, exist_ok=True)
        versions = self.versions()  # listed once: a save per client per round
        if not self._mine():  # another run's versions: this run claims the directory
            for version in versions:
                (self.directory / f"round-{version:06d}.pt").unlink(missing_ok=True)
            versions = []
            atomic_write_text(self._owner, self.run_key)
        atomic_write(self.directory / f"round-{server_round:06d}.pt", lambda tmp: torch.save(state, tmp))
        versions = sorted({*versions, server_round})
        needed = [v for v in versions if v <= durable_round]
        floor = needed[-1] if needed else 0
        for version in versions:
            if version < floor:
                (self.directory / f"round-{version:06d}.pt").unlink(missing_ok=True)

    def newest(self, at_most_round: int) -> int | None:
        """The round of this run's newest state written at or before ``at_most_round``, or None."""
        if not self._mine():
            return None
        return max((v for v in self.versions() if v <= at_most_round), default=None)

    def load(self, at_most_round: int) -> dict[str, torch.Tensor] | None:
        """This run's newest state written at or before ``at_most_round``, or None."""
        version = self.newest(at_most_round)
        if version is None:
            return None
        return torch.load(self.directory / f"round-{version:06d}.pt", weights_only=True)
