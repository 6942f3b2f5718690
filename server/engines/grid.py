"""Every fedmtl engine carries Flower messages over a Flower ``Grid``: :class:`GridEngine` is the one
adapter between the round driver's envelopes (:mod:`fedmtl.core.messages`) and Flower ``Message``
objects, whichever grid it is given (fedmtl's direct or in-process grid, Flower's simulation grid, a
deployed SuperLink's).

Replies are pulled every ``pull_interval_s`` (0.1 s) from a deployed SuperLink: Flower's
``HttpGrid.send_and_receive`` sleeps 3 s between pulls, which added up to 3 s to every message exchange
(``benchmarks/deployment.py``). Other grids keep their own ``send_and_receive``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from clients.arrays import to_record, to_state
from fedmtl.config.sections import SecureAggregationConfig
from fedmtl.core import protocol, timeline
from fedmtl.core.errors import ConfigError, FederationError, WorkerPoolDied
from fedmtl.core.messages import EVALUATE, TRAIN, Exchange, Reply, Send
from fedmtl.core.params import is_head
from fedmtl.driver.engine import EngineCapabilities
from server.engines.placed import PlacedGrid
from server.engines.replies import RequestedNodes
from server.engines.secure import secure_round
from server.engines.superlink_pull import pull_replies

NODE_WAIT_S = 120.0
SETTLE_S = 2.0  # a federation's node count is taken once it has not changed for this long
PULL_INTERVAL_S = 0.1  # between pulls of replies from a deployed SuperLink (Flower's own: 3 s)
DEAD_WORKER_MARKERS = ("ActorDiedError", "RayActorError", "actor died", "ActorUnavailableError", "WorkerCrashedError")
MESSAGE_TYPES = {"train": MessageType.TRAIN, EVALUATE: MessageType.EVALUATE}


def received_together(
    grid: Grid, messages: Iterable[Message], timeout: float | None, on_message: Callable[[Message], None] | None
) -> list[Message]:
    """``grid.send_and_receive``, then ``on_message`` with each reply."""
    received = list(grid.send_and_receive(messages, timeout=timeout))
    if on_message is not None:
        for message in received:
            on_message(message)
    return received


# What each kind of grid can do, declared once: fedmtl's own grids are placed; Flower's simulation grid
# is a fixed federation whose nodes must be asked who they are; any other grid (a deployed SuperLink's)
# may still be connecting nodes.
SIMULATED = EngineCapabilities(places_nodes=False, fixed_size=True)
DEPLOYED = EngineCapabilities(places_nodes=False, fixed_size=False)


def is_flower_grid(grid: Grid, module: str, name: str) -> bool:
    """Whether ``grid`` is an instance of Flower's class ``module.name``, without importing ``module``: a grid
    of that class exists only once whoever made it imported the module. Importing ``flwr.superlink.grid``
    (its link state and SQL object store) took about 0.9 s of every start of the simulation engines, which
    never make such grids."""
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None) if loaded is not None else None
    return cls is not None and isinstance(grid, cls)


def capabilities_of(grid: Grid) -> EngineCapabilities:
    if isinstance(grid, PlacedGrid):
        return grid.CAPABILITIES
    return SIMULATED if is_flower_grid(grid, "flwr.superlink.grid", "InMemoryGrid") else DEPLOYED


def worker_died(replies: list[Message]) -> bool:
    return any(m.has_error() and any(mark in (m.error.reason or "") for mark in DEAD_WORKER_MARKERS) for m in replies)


def wait_for_nodes(grid: Grid, count: int, timeout_s: float = NODE_WAIT_S) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} SuperNodes connected within {timeout_s:.0f} s but the federation has {count} "
                "participants: start one SuperNode per participant (check with `flwr supernode ls`)"
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


def federation_nodes(
    grid: Grid,
    count: int,
    capabilities: EngineCapabilities,
    key: str = "clients.count",
    timeout_s: float = NODE_WAIT_S,
    settle_s: float = SETTLE_S,
) -> list[int]:
    """The federation's nodes, exactly ``count`` of them, or one line naming both sizes. A fixed federation
    is checked as soon as it has settled; a deployment may still be starting SuperNodes, so it is waited for."""
    if capabilities.fixed_size and not capabilities.places_nodes:
        nodes = settled_nodes(grid, timeout_s, settle_s)
        if len(nodes) != count:
            raise ConfigError(
                key,
                f"gives {count} participants but the simulated federation has {len(nodes)} SuperNodes "
                f'(num-supernodes): run with --federation-config "num-supernodes={count}", or set {key} to match, '
                "or leave clients.count unset to take it from the federation",
            )
        return nodes
    nodes = wait_for_nodes(grid, count, timeout_s)
    if len(nodes) > count:
        raise ConfigError(
            key,
            f"gives {count} participants but {len(nodes)} SuperNodes are connected: every connected SuperNode must "
            "play one participant, or leave clients.count unset to take it from the federation",
        )
    return nodes


def exchange(
    grid: Grid,
    messages: list[Message],
    timeout_s: float,
    pull_interval_s: float = PULL_INTERVAL_S,
    on_message: Callable[[Message], None] | None = None,
) -> list[Message]:
    """``grid.send_and_receive``; against a deployed SuperLink, pulling replies every ``pull_interval_s``.
    ``on_message`` is called with each reply as it arrives (fedmtl's grids and a SuperLink; Flower's
    simulation hands them over together at the end)."""
    if not is_flower_grid(grid, "flwr.superlink.grid.http_grid", "HttpGrid"):
        if not isinstance(grid, PlacedGrid):
            return received_together(grid, messages, timeout_s, on_message)
        grid.on_message = on_message
        try:
            return list(grid.send_and_receive(messages, timeout=timeout_s))
        finally:
            grid.on_message = None
    pending = set(grid.push_messages(messages))
    timeline.mark("server_pushed")
    deadline = time.monotonic() + timeout_s
    replies: list[Message] = []
    while pending:
        pull_started = time.monotonic()
        pulled = pull_replies(grid, pending)
        for message in pulled:  # pull_s: a pull waits for a reply's arrays still uploading (superlink_pull)
            timeline.mark("server_pulled", node=message.metadata.src_node_id, pull_s=time.monotonic() - pull_started)
            if on_message is not None:
                on_message(message)
        replies += pulled
        pending -= {m.metadata.reply_to_message_id for m in pulled}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(pull_interval_s)
    return replies


def payload_bytes(messages: Sequence[Message]) -> int:
    """Bytes of parameter arrays in ``messages`` (what the federation's communication cost is made of)."""
    return sum(
        len(array.data)
        for m in messages
        if not m.has_error()
        for record in m.content.array_records.values()
        for array in record.values()
    )


def metric_reports(message: Message) -> list[dict[str, Any]]:
    """Every metrics record of a reply (``metrics``, then ``metrics.1`` ...: one per client it speaks for)."""
    records = message.content.metric_records
    keys = sorted((k for k in records if k == protocol.METRICS or k.startswith(protocol.METRICS + ".")), key=len)
    return [dict(records[k]) for k in keys]


def to_reply(message: Message, participant: int | None) -> Reply:
    if message.has_error():
        return Reply(participant, error=message.error.reason or f"error code {message.error.code}")
    arrays_records = message.content.array_records
    problem = None
    if set(arrays_records) - {protocol.ARRAYS}:
        problem = f"expected exactly one ArrayRecord '{protocol.ARRAYS}', got {sorted(arrays_records)}"
    record = arrays_records.get(protocol.ARRAYS)
    arrays = to_state(record) if record is not None and problem is None else None
    return Reply(participant, arrays, metric_reports(message), problem=problem, payload_bytes=payload_bytes([message]))


class GridEngine:
    """:class:`fedmtl.driver.engine.Engine` over a Flower ``Grid``."""

    def __init__(
        self,
        grid: Grid,
        capabilities: EngineCapabilities | None = None,
        pull_interval_s: float = PULL_INTERVAL_S,
        node_timeout_s: float = NODE_WAIT_S,
        count_key: str = "clients.count",
        query_config: Mapping[str, Any] | None = None,
        secure: SecureAggregationConfig | None = None,
        secure_weighted: bool = True,
    ) -> None:
        """``query_config``: what a node needs to know who it is when asked (``clients.count`` when the
        run config leaves it to the federation). ``secure``: training rounds go through SecAgg+, the mean
        weighted by example counts when ``secure_weighted``, else plain."""
        self.grid, self.pull_interval_s, self.node_timeout_s = grid, pull_interval_s, node_timeout_s
        self.count_key, self.query_config = count_key, dict(query_config or {})
        self.capabilities = capabilities or capabilities_of(grid)
        self.node_of: Mapping[int, int] = {}  # participant -> node
        self.known = False  # whether node_of is known to be right (else replies are taken at their word)
        self.secure, self.secure_weighted = secure, secure_weighted
        self.largest_examples: float | None = None  # asked of the participants before the first secure round
        self.silent: set[int] = set()  # nodes that missed a reply: places a rejoining SuperNode may take
        self.asked: set[int] = set()  # new nodes asked who they are (answered or not)

    def connect(self, participants: int, interchangeable: bool) -> None:
        if self.capabilities.places_nodes and isinstance(self.grid, PlacedGrid):  # every node there, none to list
            placed = len(self.grid.contexts)
            if placed != participants:
                raise ConfigError(
                    self.count_key, f"gives {participants} participants but the grid placed {placed} nodes"
                )
            self.node_of, self.known = self.grid.partition_nodes(), True
            return
        nodes = federation_nodes(self.grid, participants, self.capabilities, self.count_key, self.node_timeout_s)
        if interchangeable:
            self.node_of, self.known = dict(enumerate(nodes)), False
        else:
            self.node_of, self.known = self.identify(nodes), True

    def _ask(
        self,
        nodes: Iterable[int],
        extra: Mapping[str, Any] | None = None,
        tolerant: bool = False,
        timeout_s: float | None = None,
    ) -> list[dict[str, Any]]:
        """Every node's answer to a query (which participant it plays; ``extra`` asks for more); with
        ``tolerant``, the answers that came (a node may be gone again), else all of them or an error."""
        config = {**self.query_config, protocol.SERVER_ROUND: 0, **(extra or {})}
        content = RecordDict({protocol.CONFIG: ConfigRecord(config)})
        nodes = list(nodes)
        messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=node) for node in nodes]
        replies = exchange(self.grid, messages, timeout_s or self.node_timeout_s, self.pull_interval_s)
        if worker_died(replies):
            raise WorkerPoolDied("a worker died while the participants were being asked")
        answers = [
            {**m.content.metric_records[protocol.METRICS], "node": m.metadata.src_node_id}
            for m in replies
            if not m.has_error()
        ]
        if len(answers) < len(nodes) and not tolerant:
            failed = next((m.error.reason for m in replies if m.has_error()), "no reply")
            raise FederationError(f"only {len(answers)} of {len(nodes)} nodes answered a query: {failed}")
        return answers

    def identify(self, nodes: list[int]) -> dict[int, int]:
        """participant -> node, one query per node: node ids are random per run, participants are not."""
        return {int(protocol.as_number(a[protocol.PARTICIPANT])): int(a["node"]) for a in self._ask(nodes)}

    def _largest_examples(self) -> float:
        """The largest example count of any participant (asked once): SecAgg+ quantizes each weight
        against it, so the tightest bound keeps the weights exact."""
        if self.largest_examples is None:
            answers = self._ask(self.node_of.values(), {protocol.NUM_EXAMPLES: True})
            self.largest_examples = float(max(protocol.as_number(a[protocol.NUM_EXAMPLES]) for a in answers))
        return self.largest_examples

    def rejoin(self, timeout_s: float) -> None:
        """A SuperNode that restarted comes back with a new node id (its old one goes silent): nodes the
        federation has not seen take over the participants they play (asked, when participants are told
        apart) or the places of silent nodes (when any node may stand for any participant)."""
        if self.capabilities.places_nodes:
            return
        current = set(self.grid.get_node_ids())
        new = sorted(current - set(self.node_of.values()) - self.asked)
        if not new:
            return
        if self.known:
            self.asked.update(new)  # a node that does not answer is not asked again every round
            answers = self._ask(new, tolerant=True, timeout_s=timeout_s)
            found = {int(protocol.as_number(a[protocol.PARTICIPANT])): int(a["node"]) for a in answers}
            self.node_of = {**self.node_of, **found}
        else:
            places = [p for p, node in self.node_of.items() if node not in current or node in self.silent]
            self.node_of = {**self.node_of, **dict(zip(places, new))}
        self.silent -= set(self.node_of.values())

    def exchange(
        self, sends: Sequence[Send], timeout_s: float, on_reply: Callable[[Reply], None] | None = None
    ) -> Exchange:
        self.rejoin(timeout_s)
        if self.secure is not None and sends and sends[0].kind == TRAIN:
            return self._secure_exchange(sends, timeout_s)
        records: dict[int, ArrayRecord] = {}  # one record per distinct state: serialised once
        messages = []
        for send in sends:
            record = records.get(id(send.arrays))
            if record is None:
                record = records[id(send.arrays)] = to_record(send.arrays)
            content = RecordDict({protocol.ARRAYS: record, protocol.CONFIG: ConfigRecord(dict(send.config))})
            messages.append(
                Message(
                    content=content, message_type=MESSAGE_TYPES[send.kind], dst_node_id=self.node_of[send.participant]
                )
            )
        round_ = sends[0].config.get(protocol.SERVER_ROUND, "?") if sends else "?"
        timeline.mark("server_send", round=round_, kind=sends[0].kind if sends else "?")
        participant_of = {self.node_of[s.participant]: s.participant for s in sends} if self.known else {}
        arrived: dict[int, Reply] = {}  # id(message) -> its reply, handed to on_reply as it came
        requested = RequestedNodes(messages)
        answered: set[int] = set()  # the nodes a reply came from, or came for

        def convert(message: Message) -> None:
            node = requested.node_of(message)
            reply = to_reply(message, participant_of.get(node))
            if node != message.metadata.src_node_id:  # the SuperLink's word that the node is unreachable:
                # it is replaced by a node that joins, as a silent one is
                self.silent.add(node)
                reply = dataclasses.replace(reply, error=f"node {node}: {reply.error}")
            arrived[id(message)] = reply
            answered.add(node)
            if on_reply is not None:
                on_reply(reply)

        replies = exchange(self.grid, messages, timeout_s, self.pull_interval_s, on_message=convert)
        timeline.mark("server_replies", round=round_)
        if worker_died(replies):
            raise WorkerPoolDied(f"round {round_}: a worker died")
        for message in replies:  # a grid that handed nothing over as it came: each reply now
            if id(message) not in arrived:
                convert(message)
        converted = [arrived[id(m)] for m in replies]
        for send in sends:  # no reply within the timeout: a failure that names the node (and its participant)
            node = self.node_of[send.participant]
            if node not in answered:
                self.silent.add(node)
                who = f"participant {send.participant} on node {node}" if self.known else f"node {node}"
                error = f"no reply from {who} within {timeout_s:g} s"
                converted.append(Reply(send.participant if self.known else None, error=error))
        return Exchange(converted, payload_bytes(messages))

    def _secure_exchange(self, sends: Sequence[Send], timeout_s: float) -> Exchange:
        """A training round through SecAgg+ (server/engines/secure.py)."""
        assert self.secure is not None
        if not self.known:  # every reply is a contribution to one sum: the server must know who sent it
            self.node_of, self.known = self.identify(list(self.node_of.values())), True
        found = secure_round(
            lambda messages, timeout: self._carry(messages, timeout_s if timeout is None else timeout),
            sends,
            self.node_of,
            self.secure,
            self._largest_examples() if self.secure_weighted else 1.0,
            self._largest_examples() if any(is_head(k) for k in sends[0].arrays) else None,
            timeout_s,
        )
        return Exchange(found.replies, found.bytes_down, found.mean)

    def _carry(self, messages: list[Message], timeout_s: float) -> list[Message]:
        replies = exchange(self.grid, messages, timeout_s, self.pull_interval_s)
        if worker_died(replies):
            raise WorkerPoolDied("a worker died during secure aggregation")
        return replies
