"""The grid fedmtl's own engines simulate their nodes on (the direct and in-process grids): every
participant placed on a node from the start, its id computed from its partition."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedmtl.driver.engine import EngineCapabilities
from server.engines.node_contexts import NodeContexts
from server.engines.node_ids import PartitionNodes, PlacedNodes


class PlacedGrid(Grid):
    """A grid that simulates its nodes itself (fedmtl's direct and in-process engines): it placed every
    participant on a node, so nobody needs to be asked, and all of them are there from the start. Node
    ids are random per grid, as Flower's are per run; partition ``i`` (participant ``i``) plays the i-th."""

    CAPABILITIES = EngineCapabilities(places_nodes=True, fixed_size=True)
    # the grid calls on_message (when set) with each reply as it arrives, inside send_and_receive
    on_message: Callable[[Message], None] | None = None
    run_config: Mapping[str, Any]  # what the ServerApp's context carries (empty: the apps got their config)
    contexts: NodeContexts  # node -> its Context, which persists across the node's messages
    _nodes: PlacedNodes  # node id <-> partition of the nodes placed at the start
    _run: Run

    def place(
        self, nodes: int, node_config: Mapping[str, Any] | None = None, state_budget_bytes: int | None = None
    ) -> None:
        """Draw the key of ``nodes`` node ids (computed from their partitions: :mod:`server.engines.node_ids`)
        and a run id; each node gets its context when first read. Past
        ``state_budget_bytes`` of private state held, the states used longest ago lose their arrays
        (:class:`~server.engines.node_contexts.NodeContexts`)."""
        rng = random.Random(random.SystemRandom().getrandbits(128))  # ids unpredictable, drawn fast
        partitions = PlacedNodes(nodes, rng.getrandbits(2 * 62))  # node -> partition, computed (never 0 or 1)
        self._run = Run.create_empty(run_id=rng.getrandbits(63))

        def context(node: int, partition: int) -> Context:
            config = {PARTITION_ID_KEY: partition, NUM_PARTITIONS_KEY: nodes, **(node_config or {})}
            return Context(self._run.run_id, node, config, RecordDict(), dict(self.run_config))

        self._nodes = partitions
        self.contexts = NodeContexts(partitions, context, state_budget_bytes)

    def node_partitions(self) -> Mapping[int, int]:
        """node id -> the partition (participant) it plays."""
        return self.contexts.partitions()

    def partition_nodes(self) -> Mapping[int, int]:
        """partition -> the node that plays it: computed while the nodes are those placed, else a table."""
        if self.contexts.unchanged():
            return PartitionNodes(self._nodes)
        return {partition: node for node, partition in self.node_partitions().items()}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)
