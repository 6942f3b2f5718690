"""The simulation engines by name (config ``simulation.engine``): the one place that names them.

Each kind names the class that runs it (``implementation``, ``module:Class``), which the apps import
when a run starts: the engines themselves need Ray and Flower, the config does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fedmtl.core.errors import require
from fedmtl.core.registry import Component, Registry


class EngineKind(Component):
    REGISTRY: ClassVar[Registry] = Registry("simulation engine", (__name__,))
    implementation: ClassVar[str]  # "module:Class" of the engine (server/engines/)

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of the implementation's constructor."""
        return {}


@dataclass(frozen=True)
class PlacedEngineKind(EngineKind):
    """An engine that simulates its nodes itself and keeps each node's Flower ``Context`` (with the
    client's private state) in the driver process.

    ``state_memory_mb``: the most memory those private states take there. Past it, the states of the
    nodes used longest ago are dropped from their contexts; their clients read them back from their state
    directory (written after every round they train) the next time they are sampled, so a run gives
    the same results with and without a budget. Unset: no limit (every client that has trained keeps
    its state in memory)."""

    state_memory_mb: float | None = None  # MB of clients' private state kept in memory; past it, read back from disk

    def __post_init__(self) -> None:
        require(
            self.state_memory_mb is None or self.state_memory_mb > 0,
            "state_memory_mb",
            f"must be > 0 (or unset: no limit), got {self.state_memory_mb}",
        )

    def engine_options(self) -> dict[str, Any]:
        budget = None if self.state_memory_mb is None else int(self.state_memory_mb * 2**20)
        return {"state_budget_bytes": budget}


@dataclass(frozen=True)
class DirectEngine(PlacedEngineKind):
    """Each message handed straight to a Ray actor, no polling: a round costs what its clients compute."""

    name: ClassVar[str] = "direct"
    implementation: ClassVar[str] = "server.engines.direct:DirectEngine"


@dataclass(frozen=True)
class FlowerEngine(EngineKind):
    """Flower's own ``run_simulation``: an in-memory link state polled every 0.1 s, Ray workers."""

    name: ClassVar[str] = "flower"
    implementation: ClassVar[str] = "server.engines.flower:FlowerSimulationEngine"


@dataclass(frozen=True)
class InProcessEngine(PlacedEngineKind):
    """Every participant's ClientApp in this process, one message after another: no Ray, no polling."""

    name: ClassVar[str] = "inprocess"
    implementation: ClassVar[str] = "server.engines.inprocess:InProcessEngine"


ENGINE_KINDS = EngineKind.REGISTRY
for _kind in (DirectEngine, FlowerEngine, InProcessEngine):
    ENGINE_KINDS.register(_kind)
