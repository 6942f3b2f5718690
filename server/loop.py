"""The Flower side of a run: messages out through a ``Grid``, replies in, handed to fedmtl's round driver.

``fedmtl.federation.rounds.RoundDriver`` owns the rules of a run; this module only translates one round into
Flower messages (:class:`FlowerRounds`) and finds out which client each node plays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.federation import protocol
from fedmtl.federation.rounds import (
    EvalRound,
    FederationError,
    RoundDriver,
    ServerState,
    TrainRound,
    WorkerPoolDied,
    restore_run,
)
from fedmtl.runfiles.rundir import RunDirectory
from server.strategy import EncoderStrategy

NODE_WAIT_S = 120.0
DEAD_WORKER_MARKERS = ("ActorDiedError", "RayActorError", "actor died", "ActorUnavailableError", "WorkerCrashedError")


def worker_died(replies: list[Message]) -> bool:
    return any(m.has_error() and any(mark in (m.error.reason or "") for mark in DEAD_WORKER_MARKERS) for m in replies)


def wait_for_nodes(grid: Grid, count: int, timeout_s: float = NODE_WAIT_S) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of {count} clients connected within {timeout_s:.0f} s")
        time.sleep(0.05)
    return nodes


def identify_clients(grid: Grid, nodes: list[int], timeout_s: float, participants: Sequence[int]) -> dict[int, int]:
    """client id -> node id. A grid that placed the nodes itself (the direct engine) knows each node's
    partition, and partition i plays client ``participants[i]`` (``clients.members``); any other grid
    is asked, one query per node: node ids are random per run, client ids are not."""
    partitions: Callable[[], Mapping[int, int]] | None = getattr(grid, "node_partitions", None)
    if partitions is not None:
        return {participants[partition]: node for node, partition in partitions().items()}
    content = RecordDict({protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: 0})})
    messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=node) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout_s))
    if worker_died(replies):
        raise WorkerPoolDied("a worker died while the clients were being identified")
    answered = {
        int(protocol.as_number(m.content.metric_records[protocol.METRICS][protocol.CLIENT_ID])): m.metadata.src_node_id
        for m in replies
        if not m.has_error()
    }
    if len(answered) < len(nodes):
        raise FederationError(f"only {len(answered)} of {len(nodes)} clients answered when asked for their client id")
    return answered


def payload_bytes(messages: list[Message]) -> int:
    """Bytes of parameter arrays in ``messages`` (what the federation's communication cost is made of)."""
    return sum(
        len(array.data)
        for m in messages
        if not m.has_error()
        for record in m.content.array_records.values()
        for array in record.values()
    )


def metric_reports(replies: list[Message]) -> list[dict]:
    return [dict(m.content[protocol.METRICS]) for m in replies if not m.has_error() and protocol.METRICS in m.content]


class FlowerRounds:
    """:class:`fedmtl.federation.rounds.ClientRounds` over a Flower ``Grid`` and :class:`EncoderStrategy`."""

    def __init__(self, grid: Grid, strategy: EncoderStrategy, timeout_s: float) -> None:
        self.grid, self.strategy, self.timeout_s = grid, strategy, timeout_s
        self._arrays: ArrayRecord | None = None  # the global state as sent, until the next aggregation

    def arrays(self) -> ArrayRecord:
        if self._arrays is None:
            self._arrays = ArrayRecord(self.strategy.state.global_state())
        return self._arrays

    def _exchange(self, messages: list[Message], server_round: int) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout_s))
        if worker_died(replies):
            raise WorkerPoolDied(f"round {server_round}: a worker died")
        return replies

    def train(self, server_round: int, config: Mapping[str, Any]) -> TrainRound:
        messages = list(
            self.strategy.configure_train(server_round, self.arrays(), ConfigRecord(dict(config)), self.grid)
        )
        replies = self._exchange(messages, server_round)
        report = self.strategy.aggregate(server_round, replies)
        self._arrays = None
        report.sampled, report.reports = len(messages), metric_reports(replies)
        report.bytes_down, report.bytes_up = payload_bytes(messages), payload_bytes(replies)
        return report

    def evaluate(self, server_round: int, config: Mapping[str, Any]) -> EvalRound:
        messages = list(
            self.strategy.configure_evaluate(server_round, self.arrays(), ConfigRecord(dict(config)), self.grid)
        )
        return EvalRound(metric_reports(self._exchange(messages, server_round)), payload_bytes(messages))


def run_federation(
    grid: Grid,
    cfg: ExperimentConfig,
    run: RunDirectory,
    echo: Callable[[str], None] | None = print,
    resume: bool = False,
    attempt: int = 0,
    client_state_dir: str | None = None,
) -> list[dict]:
    """Run the rounds of ``cfg`` (from the last checkpoint when ``resume``); write everything into ``run``."""
    nodes = wait_for_nodes(grid, len(cfg.clients.participants()))
    state = ServerState.initial(cfg)
    participants = cfg.clients.participants()
    client_nodes = (
        identify_clients(grid, nodes, cfg.server.round_timeout_s, participants)
        if state.sampler.needs_client_ids
        else None
    )
    strategy = EncoderStrategy(state, cfg.server.max_update_norm, client_nodes)
    done = restore_run(run, state, resume, attempt)
    driver = RoundDriver(cfg, run, state, echo=echo, attempt=attempt, client_state_dir=client_state_dir)
    return driver.run_rounds(FlowerRounds(grid, strategy, cfg.server.round_timeout_s), done)
