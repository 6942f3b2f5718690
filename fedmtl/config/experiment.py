"""The experiment configuration: typed, frozen, validated once at the edge (:mod:`fedmtl.config.loading`),
then passed down. ``python simulate.py --print-config`` prints it resolved, every default filled in."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fedmtl.config.sections import (
    CheckpointConfig,
    ClientConfig,
    FaultsConfig,
    OutputConfig,
    PrivacyConfig,
    ResourcesConfig,
    ServerConfig,
    SimulationConfig,
)
from fedmtl.config.study import StudyConfig, SweepConfig
from fedmtl.core.errors import require
from fedmtl.core.typed import to_plain
from fedmtl.data.clients import ClientsConfig
from fedmtl.data.issues import DataIssue
from fedmtl.data.participants import Participant
from fedmtl.data.suites import SyntheticSuite, TaskSuite
from fedmtl.model.config import ModelConfig


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "default"  # names the run directory (<output.dir>/<timestamp>-<name>) and the summaries
    seed: int = 0  # the one seed every random draw derives from (data, head initialisation, batch order)
    rounds: int = 15  # federated rounds: local training on the sampled clients, then one server step
    eval_every: int = 1  # evaluate every k rounds (and at round 0): the encoder each client receives, its private heads
    data: TaskSuite = field(default_factory=SyntheticSuite)  # {name: synthetic, ...}
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    # Issues injected into chosen clients' data: [{name: label_noise | annotation | leakage, task: ...,
    # clients: [...], ...}] (fedmtl/data/issues.py); applied after the suite makes a client's data.
    data_issues: tuple[DataIssue, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    # Client-level differential privacy of encoder updates: {clip_norm: 1.0, noise_multiplier: 1.0,
    # noise_at: server | client, delta: 1e-5, epsilon_budget: null} (docs/METHODS.md, "Privacy").
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "rounds", f"must be >= 1, got {self.rounds}")
        require(self.eval_every >= 1, "eval_every", f"must be >= 1, got {self.eval_every}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @cached_property
    def data_fingerprint(self) -> str:
        """Stable hash of what the clients' data depends on (seed, data suite, the clients settings that
        decide a client's data, data issues; not who trains): the key of the per-process client-data
        cache, shared by every run of a study that uses the same data. Computed once per config object
        (every message of a simulated federation asks)."""
        plain = self.to_dict()
        clients = {k: v for k, v in plain["clients"].items() if k not in NOT_DATA}
        return _digest(
            {"seed": plain["seed"], "data": plain["data"], "clients": clients, "data_issues": plain["data_issues"]}
        )

    def participants(self) -> Sequence[Participant]:
        """Who trains and evaluates, in node partition order (``clients.participants``); built once per
        config object (every message of a simulated federation looks its participant up)."""
        return self._participants

    @cached_property
    def _participants(self) -> Sequence[Participant]:
        return self.clients.layout(self.data.task_names())

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for a worker, a study task) without the participants it built: a receiver that needs
        them builds them again from the clients settings (at a million clients about 25 ms, config checks
        included), rather than receive their columns (two int64 columns, 16 MB) with every config."""
        return {k: v for k, v in self.__dict__.items() if k != "_participants"}


NOT_DATA = ("only_tasks", "members", "participants")  # clients settings that decide who trains, not the data


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def sample_size(clients: int, fraction: float) -> int:
    """How many of ``clients`` a round samples at ``fraction``: ``round(fraction * clients)``, at least one."""
    return max(1, round(clients * fraction))
