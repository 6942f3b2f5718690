"""Run one federation on Flower's simulation engine (Ray backend), restarting from the last
checkpoint when the Ray worker pool dies (Flower 1.41 keeps routing clients to dead workers)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.simulation import run_simulation

from clients.client_app import make_client_app
from fedmtl.checkpoint import CLIENT_STATE_DIR
from fedmtl.config import ExperimentConfig
from fedmtl.resources import backend_config
from fedmtl.rundir import RunDirectory
from server.loop import FederationError, WorkerPoolDied
from server.server_app import make_server_app


class RestartsExhausted(FederationError):
    """The worker pool died more often than ``checkpoint.restarts`` allows."""


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


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
    backend = backend_config(cfg.resources)
    client_state_dir = str((run_dir.path / CLIENT_STATE_DIR).resolve())
    attempt = 0
    while True:
        try:
            run_simulation(
                server_app=make_server_app(cfg, run_dir, resume or attempt > 0, attempt, client_state_dir),
                client_app=make_client_app(cfg),
                num_supernodes=len(cfg.clients.participants()),
                backend_config=backend,
                verbose_logging=verbose,
            )
            return
        except WorkerPoolDied as died:
            if attempt >= cfg.checkpoint.restarts:
                raise RestartsExhausted(f"{died}; gave up after {attempt} restarts (checkpoint.restarts)") from None
            attempt += 1
            echo(f"fedmtl: {died}; restarting from the last checkpoint (restart {attempt} of {cfg.checkpoint.restarts})")
        finally:
            shutdown_ray()
