"""A federation as a ServerApp sees it: the experiment's config (its size possibly left to the federation)
and one run over the grid Flower gave it. Everything else is fedmtl's driver."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.serverapp import Grid

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.run_config import config_from_run_config, fixed_clients_count
from fedmtl.core import protocol
from fedmtl.driver.run import run_rounds
from fedmtl.runfiles.rundir import RunDirectory
from server.engines.grid import (
    NODE_WAIT_S,
    PULL_INTERVAL_S,
    SETTLE_S,
    GridEngine,
    capabilities_of,
    federation_nodes,
    settled_nodes,
)


def config_for_federation(
    grid: Grid, run_config: Mapping[str, Any], timeout_s: float = NODE_WAIT_S, settle_s: float = SETTLE_S
) -> ExperimentConfig:
    """The run's config, with ``clients.count`` taken from the federation when the run config leaves it
    unset; fails in one line when the run config's clients and the federation's nodes disagree."""
    cfg = config_from_run_config(run_config)  # config errors before any waiting
    if fixed_clients_count(run_config) is None and not cfg.clients.members:
        count = len(settled_nodes(grid, timeout_s, settle_s))
        cfg = config_from_run_config(run_config, clients_count=count)
        print(f"fedmtl: clients.count not set: {count}, one client per SuperNode of the federation", flush=True)
    key = "clients.members" if cfg.clients.members else "clients.count"
    federation_nodes(grid, len(cfg.participants()), capabilities_of(grid), key, timeout_s, settle_s)
    return cfg


def run_federation(
    grid: Grid,
    cfg: ExperimentConfig,
    run: RunDirectory,
    echo: Callable[[str], None] | None = print,
    resume: bool = False,
    attempt: int = 0,
    client_state_dir: str | None = None,
    pull_interval_s: float = PULL_INTERVAL_S,
) -> None:
    """Run the rounds of ``cfg`` over ``grid`` (from the last checkpoint when ``resume``) into ``run``."""
    key = "clients.members" if cfg.clients.members else "clients.count"
    query = {protocol.CLIENTS_COUNT: cfg.clients.count}
    secure = cfg.privacy.secure_aggregation
    engine = GridEngine(
        grid,
        pull_interval_s=pull_interval_s,
        count_key=key,
        query_config=query,
        secure=secure if secure.enabled else None,
        secure_weighted=not cfg.server.aggregator.uniform_mean,
    )
    run_rounds(cfg, run, engine, resume=resume, attempt=attempt, state_dir=client_state_dir, echo=echo)
