"""Run one federation in simulation on the configured engine (``simulation.engine``), restarting from the
last checkpoint when simulation workers die.

Every engine runs the same ServerApp and ClientApp (:mod:`server.engines`); an engine says how to run one
federation and how to keep workers up across the runs of a study (:func:`engine_session`).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from clients.client_app import make_client_app
from fedmtl.config.engines import EngineKind, InProcessEngine, PlacedEngineKind
from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.sections import ResourcesConfig
from fedmtl.core.errors import FederationError, WorkerPoolDied
from fedmtl.core.layout import CLIENT_STATE_DIR
from fedmtl.runfiles.rundir import RunDirectory
from fedmtl.runtime.resources import backend_config
from server.engines import workers
from server.server_app import make_server_app


class RestartsExhausted(FederationError):
    """The worker pool died more often than ``checkpoint.restarts`` allows."""


class SimulationEngine(Protocol):
    """How a simulation engine runs one federation, and keeps its workers up across a study's runs."""

    def run(
        self, server_app: ServerApp, client_app: ClientApp, nodes: int, backend: dict[str, Any], verbose: bool
    ) -> None: ...

    def session(self, resources: ResourcesConfig) -> AbstractContextManager[ResourcesConfig]: ...


def engine_for(kind: EngineKind) -> SimulationEngine:
    """The engine named in ``simulation.engine`` (its class is imported when a run starts: Ray, Flower)."""
    module, _, name = kind.implementation.partition(":")
    engine: SimulationEngine = getattr(importlib.import_module(module), name)(**kind.engine_options())
    return engine


def shutdown_ray() -> None:
    """Stop every worker and this process's Ray connection (whatever engine started them)."""
    workers.shutdown()


@contextlib.contextmanager
def engine_session(cfg: ExperimentConfig) -> Iterator[ResourcesConfig]:
    """Workers kept up for every federation run inside the block (a study, a sweep); yields the
    resources those runs must use."""
    with engine_for(cfg.simulation.engine).session(cfg.resources) as resources:
        yield resources


def federate(
    cfg: ExperimentConfig,
    run_dir: RunDirectory,
    resume: bool = False,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> None:
    """Run ``cfg``'s rounds into ``run_dir`` (from its checkpoint when ``resume``).

    Raises :class:`FederationError` when the federation cannot go on.
    """
    engine = engine_for(cfg.simulation.engine)
    client_state_dir = str((run_dir.path / CLIENT_STATE_DIR).resolve())
    nodes = len(cfg.participants())
    attempt = 0
    # Restarts reuse the engine's session: Ray and the live workers stay up (a dead worker is replaced), so Ray
    # is not shut down and started again in this process between attempts (a restart test once hung between a
    # worker's death and the restart, where that happened) and a restart costs no Ray start-up. Inside a
    # study's session this one only nests.
    with engine.session(cfg.resources) as resources:
        backend = backend_config(resources)
        while True:
            try:
                server_app = make_server_app(cfg, run_dir, resume or attempt > 0, attempt, client_state_dir, echo)
                engine.run(server_app, make_client_app(cfg), nodes, backend, verbose)
                return
            except WorkerPoolDied as died:
                if attempt >= cfg.checkpoint.restarts:
                    raise RestartsExhausted(f"{died}; gave up after {attempt} restarts (checkpoint.restarts)") from None
                attempt += 1
                echo(
                    f"fedmtl: {died}; restarting from the last checkpoint "
                    f"(restart {attempt} of {cfg.checkpoint.restarts})"
                )


def federate_in_process(cfg: ExperimentConfig) -> None:
    """The run ``cfg`` describes, on the in-process engine (its clients one after another in this
    process, no Ray), quietly: one run of a study inside a Ray task (server/study_pool.py)."""
    chosen = cfg.simulation.engine  # its memory budget for private state stays
    engine = InProcessEngine(state_memory_mb=chosen.state_memory_mb if isinstance(chosen, PlacedEngineKind) else None)
    cfg = replace(cfg, simulation=replace(cfg.simulation, engine=engine))
    federate(cfg, RunDirectory.create(cfg), echo=lambda line: None)
