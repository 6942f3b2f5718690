"""An in-process federation for tests: the ServerApp and every node's ClientApp in this process, as
``flwr run`` and a deployment start them (config from the run config), without Ray or real processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import make_client_app
from server.server_app import make_server_app


def run_config(*overrides: str, **keys: Any) -> dict[str, Any]:
    """A run config as ``flwr run --run-config`` gives it: ``config-overrides`` joined with ``;``."""
    return {"config-overrides": ";".join(overrides), **keys}


class LoopbackGrid(Grid):
    """A federation in this process: each node's ClientApp handles its messages at once. Node ids are
    random per grid (as Flower's are per run); ``fail_at_train`` makes the server's n-th training
    exchange raise, as a SuperLink that went away would."""

    def __init__(self, run_config: Mapping[str, Any], nodes: int, state_dir: Path, fail_at_train: int = 0) -> None:
        self.client_app = make_client_app()
        self.fail_at_train, self.trains = fail_at_train, 0
        self._run = Run.create_empty(run_id=uuid.uuid4().int >> 65)
        self.contexts = {
            uuid.uuid4().int >> 66: Context(
                run_id=self._run.run_id,
                node_id=0,
                node_config={"partition-id": i, "num-partitions": nodes, "state-dir": str(state_dir)},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(nodes)
        }

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.trains += 1
            if self.trains == self.fail_at_train:
                raise ConnectionError("the SuperLink went away")
        replies = []
        for message in messages:
            message.metadata.__dict__.update(
                _message_id=uuid.uuid4().hex, _run_id=self._run.run_id, _src_node_id=SUPERLINK_NODE_ID
            )
            reply = self.client_app(message, self.contexts[message.metadata.dst_node_id])
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(reply)
        return replies


def serve(grid: Grid, config: Mapping[str, Any]) -> None:
    """``server.server_app.app`` as Flower calls it."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))
    make_server_app()(grid, context)
