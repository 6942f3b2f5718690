"""The Flower side of a run: messages out through a ``Grid``, replies in, handed to fedmtl's round driver.

``fedmtl.federation.rounds.RoundDriver`` owns the rules of a run; this module only translates one round into
Flower messages (:class:`FlowerRounds`), finds out how many nodes the federation has and which client each
node plays.

Replies are pulled every ``pull_interval_s`` (0.1 s) from a deployed SuperLink: Flower's
``HttpGrid.send_and_receive`` sleeps 3 s between pulls, which added up to 3 s to every message exchange
(``benchmarks/deployment.py``). Other grids (the in-memory one of the simulation engine, the direct
engine's) keep their own ``send_and_receive``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid
from flwr.superlink.grid.http_grid import HttpGrid

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.run_config import config_from_run_config, fixed_clients_count
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
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
SETTLE_S = 2.0  # a federation's node count is taken once it has not changed for this long
PULL_INTERVAL_S = 0.1  # between pulls of replies from a deployed SuperLink (Flower's own: 3 s)
DEAD_WORKER_MARKERS = ("ActorDiedError", "RayActorError", "actor died", "ActorUnavailableError", "WorkerCrashedError")


def worker_died(replies: list[Message]) -> bool:
    return any(m.has_error() and any(mark in (m.error.reason or "") for mark in DEAD_WORKER_MARKERS) for m in replies)


def wait_for_nodes(grid: Grid, count: int, timeout_s: float = NODE_WAIT_S) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} SuperNodes connected within {timeout_s:.0f} s but clients.count is {count}: "
                "start one SuperNode per client (check with `flwr supernode ls`)"
            )
        time.sleep(0.05)
    return nodes


def settled_nodes(grid: Grid, timeout_s: float = NODE_WAIT_S, settle_s: float = SETTLE_S) -> list[int]:
    """The federation's nodes once there is at least one and their number has not changed for ``settle_s``
    (a simulated federation registers its ``num-supernodes`` nodes while the ServerApp starts)."""
    deadline = time.monotonic() + timeout_s
    nodes: list[int] = []
    since = time.monotonic()
    while True:
        now = time.monotonic()
        if len(current := sorted(grid.get_node_ids())) != len(nodes):
            nodes, since = current, now
        if nodes and now - since >= settle_s:
            return nodes
        if now > deadline:
            raise FederationError(f"no SuperNode connected within {timeout_s:.0f} s")
        time.sleep(0.05)


def simulated(grid: Grid) -> bool:
    """A federation of fixed size (``num-supernodes``): Flower's simulation engine."""
    return isinstance(grid, InMemoryGrid)


def federation_nodes(
    grid: Grid, count: int, key: str = "clients.count", timeout_s: float = NODE_WAIT_S, settle_s: float = SETTLE_S
) -> list[int]:
    """The federation's nodes, exactly ``count`` of them, or one line naming both sizes. A simulated
    federation is checked as soon as it has settled; a deployment may still be starting SuperNodes, so
    it is waited for (up to ``timeout_s``)."""
    if simulated(grid):
        nodes = settled_nodes(grid, timeout_s, settle_s)
        if len(nodes) != count:
            raise ConfigError(
                key,
                f"is {count} but the simulated federation has {len(nodes)} SuperNodes (num-supernodes): "
                f'run with --federation-config "num-supernodes={count}", or set {key} to match, '
                "or leave clients.count unset to take it from the federation",
            )
        return nodes
    nodes = wait_for_nodes(grid, count, timeout_s)
    if len(nodes) > count:
        raise ConfigError(
            key,
            f"is {count} but {len(nodes)} SuperNodes are connected: every connected SuperNode must play one "
            f"client, or leave clients.count unset to take it from the federation",
        )
    return nodes


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
    federation_nodes(grid, len(cfg.clients.participants()), key, timeout_s, settle_s)
    return cfg


def exchange(
    grid: Grid, messages: list[Message], timeout_s: float, pull_interval_s: float = PULL_INTERVAL_S
) -> list[Message]:
    """``grid.send_and_receive``; against a deployed SuperLink, pulling replies every ``pull_interval_s``."""
    if not isinstance(grid, HttpGrid):
        return list(grid.send_and_receive(messages, timeout=timeout_s))
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout_s
    replies: list[Message] = []
    while pending:
        pulled = list(grid.pull_messages(pending))
        replies += pulled
        pending -= {m.metadata.reply_to_message_id for m in pulled}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(pull_interval_s)
    return replies


def identify_clients(
    grid: Grid,
    nodes: list[int],
    timeout_s: float,
    participants: Sequence[int],
    clients_count: int | None = None,
    pull_interval_s: float = PULL_INTERVAL_S,
) -> dict[int, int]:
    """client id -> node id. A grid that placed the nodes itself (the direct engine) knows each node's
    partition, and partition i plays client ``participants[i]`` (``clients.members``); any other grid
    is asked, one query per node: node ids are random per run, client ids are not."""
    partitions: Callable[[], Mapping[int, int]] | None = getattr(grid, "node_partitions", None)
    if partitions is not None:
        return {participants[partition]: node for node, partition in partitions().items()}
    config = ConfigRecord({protocol.SERVER_ROUND: 0})
    if clients_count is not None:
        config[protocol.CLIENTS_COUNT] = clients_count
    content = RecordDict({protocol.CONFIG: config})
    messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=node) for node in nodes]
    replies = exchange(grid, messages, timeout_s, pull_interval_s)
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

    def __init__(
        self, grid: Grid, strategy: EncoderStrategy, timeout_s: float, pull_interval_s: float = PULL_INTERVAL_S
    ) -> None:
        self.grid, self.strategy, self.timeout_s, self.pull_interval_s = grid, strategy, timeout_s, pull_interval_s
        self._arrays: ArrayRecord | None = None  # the global state as sent, until the next aggregation

    def arrays(self) -> ArrayRecord:
        if self._arrays is None:
            self._arrays = ArrayRecord(self.strategy.state.global_state())
        return self._arrays

    def _exchange(self, messages: list[Message], server_round: int) -> list[Message]:
        replies = exchange(self.grid, messages, self.timeout_s, self.pull_interval_s)
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
    pull_interval_s: float = PULL_INTERVAL_S,
) -> list[dict]:
    """Run the rounds of ``cfg`` (from the last checkpoint when ``resume``); write everything into ``run``."""
    nodes = wait_for_nodes(grid, len(cfg.clients.participants()))
    state = ServerState.initial(cfg)
    participants = cfg.clients.participants()
    client_nodes = (
        identify_clients(grid, nodes, cfg.server.round_timeout_s, participants, cfg.clients.count, pull_interval_s)
        if state.needs_client_ids
        else None
    )
    strategy = EncoderStrategy(state, cfg.server.max_update_norm, client_nodes)
    done = restore_run(run, state, resume, attempt)
    driver = RoundDriver(cfg, run, state, echo=echo, attempt=attempt, client_state_dir=client_state_dir)
    return driver.run_rounds(FlowerRounds(grid, strategy, cfg.server.round_timeout_s, pull_interval_s), done)
