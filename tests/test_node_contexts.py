"""A placed grid's node contexts: every node known from the start, a context made when first read."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY

from server.engines.grid import PlacedGrid
from server.engines.node_contexts import NodeContexts


class Placed(PlacedGrid):
    run_config = {"a": 1}

    def push_messages(self, messages):  # type: ignore[no-untyped-def]  # not used here
        raise NotImplementedError

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def test_a_million_nodes_are_placed_without_a_context_each() -> None:
    grid = Placed()
    grid.place(1_000_000)
    assert len(grid.contexts) == 1_000_000 and grid.contexts.made() == 0
    partitions = grid.node_partitions()
    assert sorted(partitions.values()) == list(range(1_000_000)) and all(node > 1 for node in partitions)
    node = next(n for n, p in partitions.items() if p == 123_456)
    context = grid.contexts[node]
    assert (context.node_id, context.run_id, context.run_config) == (node, grid.run.run_id, {"a": 1})
    assert context.node_config == {PARTITION_ID_KEY: 123_456, NUM_PARTITIONS_KEY: 1_000_000}
    assert grid.contexts[node] is context and grid.contexts.made() == 1  # made once, then kept


def test_a_stored_context_replaces_the_made_one_and_unknown_nodes_are_not_made() -> None:
    contexts = NodeContexts(
        {10: 0, 11: 1}, lambda node, partition: Context(1, node, {PARTITION_ID_KEY: partition}, RecordDict(), {})
    )
    after = Context(1, 11, {PARTITION_ID_KEY: 1}, RecordDict({}), {"round": 2})
    contexts[11] = after
    assert contexts[11] is after and contexts.made() == 1
    contexts[12] = Context(1, 12, {}, RecordDict(), {})  # a node that joined later, without a partition
    assert list(contexts) == [10, 11, 12] and contexts.partitions() == {10: 0, 11: 1, 12: -1}
    assert 13 not in contexts
    with pytest.raises(KeyError):
        contexts[13]
    del contexts[10]
    assert 10 not in contexts and len(contexts) == 2
