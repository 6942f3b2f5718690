"""The in-process engine: every participant's ClientApp in this process, one message after another.

No Ray and no polling: the same ServerApp and ClientApp as the other engines, for debugging with a
plain debugger, and for tests and small runs that should not start workers. A node's ``Context``
persists across its messages, as in a real federation. There are no workers to lose, so injected
worker deaths (``faults.worker_kill_round``) need another engine.
"""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flwr.app import Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import ServerApp

from fedmtl.config.sections import ResourcesConfig
from server.engines.launch import run_server_app
from server.engines.placed import PlacedGrid


class InProcessGrid(PlacedGrid):
    """Nodes played by ``client_app`` in this process; node ids random per grid, as Flower's are per run."""

    def __init__(
        self, client_app: ClientApp, nodes: int, run_config: Mapping[str, Any] | None = None,
        node_config: Mapping[str, Any] | None = None, state_budget_bytes: int | None = None,
    ) -> None:  # fmt: skip
        self.client_app, self.run_config = client_app, dict(run_config or {})
        self.place(nodes, node_config, state_budget_bytes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the in-process grid answers in send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the in-process grid answers in send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in self.contexts:
                raise ValueError(f"message for unknown node {node}")
            message.metadata.__dict__.update(
                _message_id=uuid.uuid4().hex, _run_id=self._run.run_id, _src_node_id=SUPERLINK_NODE_ID
            )  # what a SuperLink sets on a pushed message
            # each node gets its own copy, as over a wire: the SecAgg+ mod edits the records it is sent, and
            # Flower's workflow sends every node the same ones
            delivered = Message(copy.deepcopy(message.content), node, message.metadata.message_type)
            delivered.metadata.__dict__.update(message.metadata.__dict__)
            context = self.contexts[node]
            try:
                reply = self.client_app(delivered, context)
            except Exception as err:  # noqa: BLE001 - the ClientApp raised: an error reply, as Flower's engines make
                reply = Message(
                    Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(err).__name__}: {err}"), reply_to=message
                )
            self.contexts[node] = context  # its state as the client left it (counted against the budget)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(reply)
            if self.on_message is not None:
                self.on_message(reply)
        return replies


class InProcessEngine:
    def __init__(self, state_budget_bytes: int | None = None) -> None:
        self.state_budget_bytes = state_budget_bytes

    def run(
        self, server_app: ServerApp, client_app: ClientApp, nodes: int, backend: dict[str, Any], verbose: bool
    ) -> None:
        run_server_app(server_app, InProcessGrid(client_app, nodes, state_budget_bytes=self.state_budget_bytes))

    @contextlib.contextmanager
    def session(self, resources: ResourcesConfig) -> Iterator[ResourcesConfig]:
        yield resources
