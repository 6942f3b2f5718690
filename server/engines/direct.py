"""The direct simulation engine: a Flower ``Grid`` that hands each Message straight to a Ray actor.

Flower 1.41's own simulation routes every message through an in-memory link state that two
threads poll every 0.1 s (one scanning every node for new messages, the Grid pulling replies), so
a round trip costs up to 0.2 s of sleep and each scan grows with the number of nodes. Here
:meth:`DirectGrid.send_and_receive` submits messages to an actor of a :class:`WorkerPool`
with their nodes' ``Context`` (as Flower's ``RayBackend.process_message`` does), several in one Ray call
while the queue is long (:func:`batch_size`), up to two calls at a time per actor while the queue is
long (:func:`next_actor`), each partition to the same actor when it can
(:func:`home_of`: the worker's caches keep its data and data checks), and blocks in ``ray.wait`` until the next
reply is in: no polling, and the cost of a round depends on the messages sent, not on the number
of nodes.

The same ``ServerApp`` and ``ClientApp`` run unchanged: node contexts persist per node across
rounds, client errors come back as error replies, a dead worker is replaced and reported with
an ``ActorDiedError`` reply (the round driver restarts from the checkpoint, as under Flower's
engine), and actors take the configured CPUs and GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``).

The pool outlives a run: within :func:`warm_workers`, every run of a study or sweep reuses the
same actors (torch imported, data caches kept).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from flwr.app import Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import ServerApp

from fedmtl.config.sections import ResourcesConfig
from server.engines import workers
from server.engines.launch import run_server_app
from server.engines.placed import PlacedGrid
from server.engines.workers import WorkerPool

SLOTS_PER_ACTOR = 2
"""Messages queued on one actor at once: it starts the next as soon as one ends, instead of idling for a
round trip to the driver (300 clients a round on the idle 2-core machine: 2.3-2.6 s against 2.9-3.5 s
with one)."""


MAX_BATCH = 16
"""Messages one Ray call carries at most. Each call costs the driver about 1 ms of its own CPU (submitting,
serializing, retrieving), which on 2 cores it takes from the workers: 1,000 clients a round, trained and
evaluated, spent about 2 s a round in calls alone."""


def batch_size(queued: int, actors: int) -> int:
    """How many of ``queued`` messages the next call takes: up to :data:`MAX_BATCH`, and no more than a
    quarter of an even share of every slot, so the round's last messages spread over every actor."""
    return max(1, min(MAX_BATCH, queued // (4 * SLOTS_PER_ACTOR * max(actors, 1))))


HOME_WINDOW = 4
"""How far past the first free message an actor looks for one at home (times the number of actors): with
partitions at home in turn, each actor finds one within a few positions."""


def home_of(partition: int, actors: Sequence[Any]) -> Any:
    """The actor a partition's messages go to when it is free (partition modulo the actors)."""
    return actors[partition % len(actors)]


def next_actor(actors: Sequence[Any], running: Mapping[Any, int], queued: int) -> Any | None:
    """The actor for the next queued message: an idle one first; a busy one takes a second message
    (up to :data:`SLOTS_PER_ACTOR`) only while more messages wait than there are actors, so the last
    messages of a round go to actors that are free rather than queue behind a slow one."""
    least = min(actors, key=lambda actor: running.get(actor, 0), default=None)
    if least is None:
        return None
    load = running.get(least, 0)
    if load == 0 or (load < SLOTS_PER_ACTOR and queued > len(actors)):
        return least
    return None


@dataclass
class _InFlight:
    messages: list[Message]
    actor: Any
    dropped: set[str] = field(default_factory=set)  # ids whose send_and_receive gave up waiting: replies discarded


@dataclass
class DirectGrid(PlacedGrid):
    """A ``Grid`` whose nodes are simulated by a :class:`WorkerPool`; see the module docstring."""

    pool: WorkerPool
    app_key: str
    num_nodes: int
    run_config: Mapping[str, Any] = field(default_factory=dict)
    state_budget_bytes: int | None = None  # simulation.engine.state_memory_mb (node_contexts.py)
    queued: deque[str] = field(init=False, default_factory=deque)
    messages: dict[str, Message] = field(init=False, default_factory=dict)
    in_flight: dict[Any, _InFlight] = field(init=False, default_factory=dict)
    replies: dict[str, Message] = field(init=False, default_factory=dict)
    busy_nodes: set[int] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.place(self.num_nodes, state_budget_bytes=self.state_budget_bytes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for message in messages:  # all checked before any is queued
            meta = message.metadata
            if meta.dst_node_id not in self.contexts:
                raise ValueError(f"message for unknown node {meta.dst_node_id}")
            if meta.reply_to_message_id or meta.ttl <= 0 or meta.delivered_at:
                raise ValueError(f"invalid message for node {meta.dst_node_id}: a reply, expired or already delivered")
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            # what a SuperLink sets on a pushed message (Flower's own grids write these fields the same way)
            message.metadata.__dict__.update(
                _message_id=message_id, _run_id=self._run.run_id, _src_node_id=SUPERLINK_NODE_ID
            )
            self.messages[message_id] = message
            self.queued.append(message_id)
            ids.append(message_id)
        self._dispatch()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._collect(timeout=0)
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        received: list[Message] = []
        while waiting:
            arrived = waiting & self.replies.keys()
            for message_id in arrived:
                received.append(self.replies.pop(message_id))
                if self.on_message is not None:  # while the workers go on with the rest
                    self.on_message(received[-1])
            waiting -= arrived
            if not waiting:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._abandon(waiting)
                break
            self._collect(timeout=remaining)
        return received

    # --- the engine ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start queued messages on actors, in order; a node runs one message at a time, so each message
        sees the context its node's previous message left."""
        running = Counter(job.actor for job in self.in_flight.values())
        while self.queued:
            actor = next_actor(self.pool.actors, running, len(self.queued))
            if actor is None:
                break
            batch: list[Message] = []
            for _ in range(batch_size(len(self.queued), len(self.pool.actors))):
                position = self._next_for(actor)
                if position is None:  # every queued message left is for a node that is running one
                    break
                message_id = self.queued[position]
                del self.queued[position]
                batch.append(self.messages.pop(message_id))
                self.busy_nodes.add(batch[-1].metadata.dst_node_id)
            if not batch:
                break
            items = [(message, self.contexts[message.metadata.dst_node_id]) for message in batch]
            self.in_flight[actor.handle.remote(self.app_key, items)] = _InFlight(batch, actor)
            running[actor] += 1

    def _next_for(self, actor: Any) -> int | None:
        """Where in the queue the message ``actor`` runs next is: among the next few whose nodes are free,
        the first whose partition is at home on it (:func:`home_of`), else the first; None when every
        queued message waits for its node. A partition keeps meeting the same worker, whose caches (the
        client's data, its data checks) then serve it again, while an actor with no home message near
        the front takes whatever comes first, so no actor idles while messages wait."""
        actors, first = self.pool.actors, None
        for position, message_id in enumerate(self.queued):
            node = self.messages[message_id].metadata.dst_node_id
            if node in self.busy_nodes:
                continue
            if first is None:
                first = position
            elif position >= first + HOME_WINDOW * len(actors):
                break
            if home_of(self.contexts.partition_of(node), actors) is actor:
                return position
        return first

    def _collect(self, timeout: float | None) -> None:
        """Wait (at most ``timeout``) for at least one running message to finish; file every finished one."""
        if not self.in_flight:
            if self.queued:
                raise RuntimeError("messages are queued but no worker runs any (empty worker pool)")
            return
        done, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=timeout)
        if done:  # everything else that is ready too, without waiting
            done = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=0)[0]
        for future in done:
            self._finish(future, self.in_flight.pop(future))
        self._dispatch()

    def _finish(self, future: Any, job: _InFlight) -> None:
        nodes = [message.metadata.dst_node_id for message in job.messages]
        self.busy_nodes.difference_update(nodes)
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION  # of the errors the worker reports, one per message
        try:
            results = ray.get(future)
        except ray.exceptions.RayTaskError as err:  # the handler raised; a ClientApp's own errors come per message
            results = [(f"{type(err.cause).__name__}: {err.cause}", None)] * len(nodes)
        except ray.exceptions.RayError as err:  # the worker died or was lost (killed, OOM, node gone): replace it
            self.pool.replace(job.actor)
            code, cause = ErrorCode.UNKNOWN, str(err).splitlines()[0][:300]
            results = [
                (f"ActorDiedError ({type(err).__name__}): worker lost while running node {node}: {cause}", None)
                for node in nodes
            ]
        for message, node, (outcome, context) in zip(job.messages, nodes, results):
            if context is not None:
                self.contexts[node] = context
            reply = Message(Error(code, outcome), reply_to=message) if isinstance(outcome, str) else outcome
            if message.metadata.message_id not in job.dropped:
                reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                self.replies[message.metadata.message_id] = reply

    def close(self) -> None:
        """End of the run: actors still running one of its messages (timed out) are replaced, so the
        next run of a warm pool has every worker; queued messages are dropped."""
        for job in self.in_flight.values():
            self.pool.replace(job.actor)
        self.in_flight.clear()
        self.queued.clear()
        self.messages.clear()

    def _abandon(self, message_ids: set[str]) -> None:
        """Timed out: queued messages are dropped, running ones finish but their replies are discarded."""
        self.queued = deque(i for i in self.queued if i not in message_ids)
        for message_id in message_ids:
            self.messages.pop(message_id, None)
        for job in self.in_flight.values():
            job.dropped.update(m.metadata.message_id for m in job.messages if m.metadata.message_id in message_ids)


class DirectEngine:
    """Runs a federation on :class:`DirectGrid`; within :meth:`session`, the workers stay up across runs."""

    def __init__(self, state_budget_bytes: int | None = None) -> None:
        self.state_budget_bytes = state_budget_bytes

    def run(
        self, server_app: ServerApp, client_app: ClientApp, nodes: int, backend: dict[str, Any], verbose: bool
    ) -> None:
        pool = workers.worker_pool(backend)
        grid = DirectGrid(pool, pool.load(client_app), nodes, state_budget_bytes=self.state_budget_bytes)
        try:
            run_server_app(server_app, grid)
        finally:
            grid.close()
            if not workers.keeping_warm():
                workers.shutdown()

    @contextlib.contextmanager
    def session(self, resources: ResourcesConfig) -> Iterator[ResourcesConfig]:
        with workers.warm_workers():
            yield resources
