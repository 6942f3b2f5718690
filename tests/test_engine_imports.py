"""What the simulation engines import and count without Flower's simulation and SuperLink packages."""

from __future__ import annotations

import subprocess
import sys

import pytest
import ray
from flwr.superlink.grid import InMemoryGrid
from flwr.superlink.grid.http_grid import HttpGrid

from server.engines.grid import is_flower_grid
from server.engines.workers import actors_that_fit


def test_starting_the_direct_engine_imports_neither_flowers_simulation_nor_its_superlink() -> None:
    """Each took about 1 s of every start, in the driver and in every worker (which imports the workers)."""
    code = (
        "import sys, server.simulation, server.engines.workers, server.engines.direct; "
        "print(sorted(m for m in sys.modules if m.startswith(('flwr.simulation', 'flwr.superlink'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_flower_grid_is_recognised_by_its_class_and_an_unloaded_module_means_no_such_grid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_memory, http = object.__new__(InMemoryGrid), object.__new__(HttpGrid)
    assert is_flower_grid(in_memory, "flwr.superlink.grid", "InMemoryGrid")
    assert not is_flower_grid(http, "flwr.superlink.grid", "InMemoryGrid")
    assert is_flower_grid(http, "flwr.superlink.grid.http_grid", "HttpGrid")
    assert not is_flower_grid(in_memory, "flwr.superlink.grid.http_grid", "HttpGrid")
    monkeypatch.delitem(sys.modules, "flwr.superlink.grid.http_grid")
    assert not is_flower_grid(http, "flwr.superlink.grid.http_grid", "HttpGrid")
    assert "flwr.superlink.grid.http_grid" not in sys.modules  # asked without importing it


def node(cpus: float, gpus: float = 0) -> dict[str, dict[str, float]]:
    return {"Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_actors_are_counted_node_by_node_as_flower_counts_them() -> None:
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    cases = [
        ([node(2), node(4)], {"num_cpus": 3}),  # per node: 0 + 1, not 6 // 3
        ([node(8, 2), node(8)], {"num_cpus": 1, "num_gpus": 0.5}),  # the GPU-less node fits none
        ([node(8, 1), {"Resources": {}}], {"num_cpus": 2, "num_gpus": 0}),  # a node that left; no GPU asked
        ([node(16, 1)], {"num_cpus": 1, "num_gpus": 0.25}),
    ]
    for nodes, resources in cases:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ray, "nodes", lambda nodes=nodes: nodes)
            assert actors_that_fit(nodes, resources) == pool_size_from_resources(resources)
    assert [actors_that_fit(nodes, resources) for nodes, resources in cases] == [1, 4, 4, 4]


def test_a_cluster_that_fits_no_worker_is_an_error_naming_the_resources() -> None:
    with pytest.raises(ValueError, match=r"no Ray node fits a client worker reserving \{'num_cpus': 4\}"):
        actors_that_fit([node(2), node(3)], {"num_cpus": 4})
