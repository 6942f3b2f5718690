"""Flower's own simulation engine (``simulation.engine: flower``): ``run_simulation`` with its Ray
backend, an in-memory link state that two threads poll every 0.1 s."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedmtl.config.sections import ResourcesConfig
from fedmtl.runtime.resources import private_ray_cluster
from server.engines import workers


class FlowerSimulationEngine:
    def run(
        self, server_app: ServerApp, client_app: ClientApp, nodes: int, backend: dict[str, Any], verbose: bool
    ) -> None:
        try:
            run_simulation(
                server_app=server_app, client_app=client_app, num_supernodes=nodes, backend_config=backend,
                verbose_logging=verbose,
            )  # fmt: skip
        finally:
            workers.shutdown()  # Flower's backend leaves the driver attached

    @contextlib.contextmanager
    def session(self, resources: ResourcesConfig) -> Iterator[ResourcesConfig]:
        """Flower's backend starts and stops Ray with every run: attach the runs to one private head."""
        if resources.ray_address:
            yield resources
            return
        with private_ray_cluster(resources) as address:
            yield replace(resources, ray_address=address, num_cpus=None, num_gpus=None)
