"""A placed grid's node contexts: every node known from the start, a context made when first read."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY

from server.engines.node_contexts import NodeContexts
from server.engines.placed import PlacedGrid


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


def with_state(node: int, partition: int, floats: int) -> Context:
    from flwr.app import ArrayRecord

    state = RecordDict({"private": ArrayRecord({"w": torch.zeros(floats)})}) if floats else RecordDict()
    return Context(1, node, {PARTITION_ID_KEY: partition}, state, {})


def test_past_the_budget_the_states_used_longest_ago_lose_their_arrays_and_keep_the_rest() -> None:
    from flwr.app import ConfigRecord

    from server.engines.node_contexts import state_bytes

    one = state_bytes(with_state(0, 0, 100))  # 400 bytes of float32 and the array's header
    assert 400 <= one < 600
    contexts = NodeContexts(
        {n: n for n in range(5)}, lambda node, partition: with_state(node, partition, 0), budget_bytes=2 * one
    )
    contexts[0] = with_state(0, 0, 100)
    second = with_state(1, 1, 100)
    second.state["secaggplus"] = ConfigRecord({"stage": "share-keys"})  # e.g. SecAgg+ between its stages
    contexts[1] = second
    assert contexts.held_bytes == 2 * one and contexts.dropped == 0
    assert contexts[0].state.array_records  # read: node 0 is now the most recently used
    contexts[2] = with_state(2, 2, 100)  # over the budget: node 1's arrays, used longest ago, go
    assert contexts.dropped == 1 and contexts.held_bytes == 2 * one
    assert contexts[0].state.array_records and contexts[2].state.array_records
    assert contexts[1] is second and not second.state.array_records  # its client reads them back from disk
    assert dict(second.state.config_records["secaggplus"]) == {"stage": "share-keys"}  # the rest stays
    assert contexts.partitions() == {n: n for n in range(5)} and len(contexts) == 5  # every node still known
    contexts[3] = with_state(3, 3, 1000)  # larger than the whole budget: kept alone, the newest
    assert contexts.held_bytes == state_bytes(contexts[3]) and contexts.dropped == 3
    contexts[3] = with_state(3, 3, 0)  # stored again, emptied: its bytes are counted anew
    assert contexts.held_bytes == 0
    del contexts[0]
    assert contexts.held_bytes == 0 and 0 not in contexts


def test_without_a_budget_every_context_stays() -> None:
    contexts = NodeContexts({n: n for n in range(50)}, lambda node, partition: with_state(node, partition, 0))
    for n in range(50):
        contexts[n] = with_state(n, n, 1000)
    assert contexts.made() == 50 and contexts.dropped == 0
