"""Run one federation in simulation on the configured engine (``simulation.engine``), restarting
from the last checkpoint when simulation workers die.

* ``direct`` (default): :mod:`server.direct_engine`, messages handed straight to Ray actors.
* ``flower``: Flower's own ``run_simulation`` (in-memory link state, polled; Ray backend).

Both run the same ``ServerApp`` and ``ClientApp``; an :class:`Engine` says how to run one
federation and how to keep workers up across the runs of a study (:func:`engine_session`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from clients.client_app import make_client_app
from fedmtl.config.experiment import ExperimentConfig, ResourcesConfig
from fedmtl.core.layout import CLIENT_STATE_DIR
from fedmtl.federation.rounds import FederationError, WorkerPoolDied
from fedmtl.runfiles.rundir import RunDirectory
from fedmtl.runtime.resources import backend_config, private_ray_cluster
from server import direct_engine
from server.server_app import make_server_app


class RestartsExhausted(FederationError):
    """The worker pool died more often than ``checkpoint.restarts`` allows."""


def shutdown_ray() -> None:
    """Stop every worker and this process's Ray connection (whatever engine started them)."""
    direct_engine.shutdown()


def _run_flower(
    server_app: ServerApp, client_app: ClientApp, cfg: ExperimentConfig, backend: dict[str, Any], verbose: bool
) -> None:
    try:
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=len(cfg.clients.participants()),
            backend_config=backend, verbose_logging=verbose,
        )  # fmt: skip
    finally:
        shutdown_ray()  # Flower's backend leaves the driver attached


def _run_direct(
    server_app: ServerApp, client_app: ClientApp, cfg: ExperimentConfig, backend: dict[str, Any], verbose: bool
) -> None:
    pool = direct_engine.worker_pool(backend)
    grid = direct_engine.DirectGrid(pool, pool.load(client_app), len(cfg.clients.participants()))
    try:
        direct_engine.run_server_app(server_app, grid)
    finally:
        grid.close()
        if not direct_engine.keeping_warm():
            direct_engine.shutdown()


@contextlib.contextmanager
def _flower_session(resources: ResourcesConfig) -> Iterator[ResourcesConfig]:
    """Flower's backend starts and stops Ray with every run: attach the runs to one private head."""
    if resources.ray_address:
        yield resources
        return
    with private_ray_cluster(resources) as address:
        yield replace(resources, ray_address=address, num_cpus=None, num_gpus=None)


@contextlib.contextmanager
def _direct_session(resources: ResourcesConfig) -> Iterator[ResourcesConfig]:
    with direct_engine.warm_workers():
        yield resources


@dataclass(frozen=True)
class Engine:
    run: Callable[[ServerApp, ClientApp, ExperimentConfig, dict[str, Any], bool], None]
    session: Callable[[ResourcesConfig], AbstractContextManager[ResourcesConfig]]


ENGINES = {"direct": Engine(_run_direct, _direct_session), "flower": Engine(_run_flower, _flower_session)}


@contextlib.contextmanager
def engine_session(cfg: ExperimentConfig) -> Iterator[ResourcesConfig]:
    """Workers kept up for every federation run inside the block (a study, a sweep); yields the
    resources those runs must use."""
    with ENGINES[cfg.simulation.engine].session(cfg.resources) as resources:
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
    engine = ENGINES[cfg.simulation.engine]
    backend = backend_config(cfg.resources)
    client_state_dir = str((run_dir.path / CLIENT_STATE_DIR).resolve())
    attempt = 0
    while True:
        try:
            server_app = make_server_app(cfg, run_dir, resume or attempt > 0, attempt, client_state_dir, echo)
            engine.run(server_app, make_client_app(cfg), cfg, backend, verbose)
            return
        except WorkerPoolDied as died:
            if attempt >= cfg.checkpoint.restarts:
                raise RestartsExhausted(f"{died}; gave up after {attempt} restarts (checkpoint.restarts)") from None
            attempt += 1
            echo(
                f"fedmtl: {died}; restarting from the last checkpoint (restart {attempt} of {cfg.checkpoint.restarts})"
            )
