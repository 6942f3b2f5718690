"""Node ids of a placed grid, computed from the partition (``PlacedNodes``): a bijection both ways, ids that
look like a SuperLink's, a different draw per grid, and no table per node (a million nodes in a few MB)."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp

from server.engines.grid import GridEngine
from server.engines.inprocess import InProcessGrid
from server.engines.node_ids import PartitionNodes, PlacedNodes


@pytest.mark.parametrize("count", [1, 2, 1000, 10**6])
def test_every_partition_has_its_own_node_id_and_the_id_gives_the_partition_back(count):
    nodes = PlacedNodes(count, random.Random(count).getrandbits(124))
    partitions = sorted({0, count - 1, *random.Random(1).sample(range(count), min(count, 2000))})
    ids = [nodes.node(p) for p in partitions]
    assert len(set(ids)) == len(ids)
    assert all(1 << 62 <= i < 1 << 63 for i in ids)  # positive int64, never the SuperLink's 0 or 1
    assert [nodes[i] for i in ids] == partitions and all(i in nodes for i in ids)
    assert PartitionNodes(nodes)[partitions[-1]] == ids[-1] and len(PartitionNodes(nodes)) == count == len(nodes)


def test_ids_of_no_partition_are_not_nodes():
    nodes = PlacedNodes(1000, 12345)
    for stranger in (0, 1, -3, (1 << 62) - 1, 1 << 63, "node"):  # outside [2^62, 2^63), or not an int
        assert stranger not in nodes
    others = [random.Random(s).getrandbits(62) | (1 << 62) for s in range(20_000)]
    assert sum(o in nodes for o in others) <= 2  # 1,000 of 2^62 ids are nodes
    with pytest.raises(KeyError):
        nodes.node(1000)
    with pytest.raises(KeyError):
        nodes[0]


def test_iteration_is_in_partition_order_and_each_grid_draws_other_ids():
    first, second = (PlacedNodes(50, random.Random(seed).getrandbits(124)) for seed in (1, 2))
    assert [first[n] for n in first] == list(range(50))
    assert set(first).isdisjoint(second)


def test_a_grid_of_a_million_nodes_and_its_engine_keep_no_table_per_node(flower_identity):
    tracemalloc.start()
    try:
        grid = InProcessGrid(ClientApp(), 10**6)
        engine = GridEngine(grid)
        engine.connect(10**6, interchangeable=False)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 8 * 2**20, held  # a dict per direction took about 150 MB each
    node = engine.node_of[123_456]
    assert grid.node_partitions()[node] == 123_456 and grid.contexts[node].node_config["partition-id"] == 123_456


def test_nodes_stored_or_removed_later_are_kept_beside_the_placed_ones(flower_identity):
    grid = InProcessGrid(ClientApp(), 3)
    placed = list(grid.contexts)
    assert isinstance(grid.partition_nodes(), PartitionNodes)
    newcomer = max(placed) + 1
    grid.contexts[newcomer] = Context(1, newcomer, {"partition-id": 1}, RecordDict(), {})
    del grid.contexts[placed[1]]
    assert list(grid.contexts) == [placed[0], placed[2], newcomer] and len(grid.contexts) == 3
    assert dict(grid.partition_nodes()) == {0: placed[0], 1: newcomer, 2: placed[2]}  # a table now
    assert placed[1] not in grid.contexts


def test_a_placed_grid_of_another_size_than_the_participants_is_refused_by_name(flower_identity):
    from fedmtl.core.errors import ConfigError

    with pytest.raises(ConfigError, match="clients.count: gives 4 participants but the grid placed 3 nodes"):
        GridEngine(InProcessGrid(ClientApp(), 3)).connect(4, interchangeable=False)
