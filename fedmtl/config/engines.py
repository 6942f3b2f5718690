"""The simulation engines by name (config ``simulation.engine``): the one place that names them.

Each kind names the class that runs it (``implementation``, ``module:Class``), which the apps import
when a run starts: the engines themselves need Ray and Flower, the config does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedmtl.core.registry import Component, Registry


class EngineKind(Component):
    REGISTRY: ClassVar[Registry] = Registry("simulation engine", (__name__,))
    implementation: ClassVar[str]  # "module:Class" of the engine (server/engines/)


@dataclass(frozen=True)
class DirectEngine(EngineKind):
    """Each message handed straight to a Ray actor, no polling: a round costs what its clients compute."""

    name: ClassVar[str] = "direct"
    implementation: ClassVar[str] = "server.engines.direct:DirectEngine"


@dataclass(frozen=True)
class FlowerEngine(EngineKind):
    """Flower's own ``run_simulation``: an in-memory link state polled every 0.1 s, Ray workers."""

    name: ClassVar[str] = "flower"
    implementation: ClassVar[str] = "server.engines.flower:FlowerSimulationEngine"


@dataclass(frozen=True)
class InProcessEngine(EngineKind):
    """Every participant's ClientApp in this process, one message after another: no Ray, no polling."""

    name: ClassVar[str] = "inprocess"
    implementation: ClassVar[str] = "server.engines.inprocess:InProcessEngine"


ENGINE_KINDS = EngineKind.REGISTRY
for _kind in (DirectEngine, FlowerEngine, InProcessEngine):
    ENGINE_KINDS.register(_kind)
