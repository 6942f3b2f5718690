"""An in-process federation for tests, as ``flwr run`` and a deployment start the apps (config from the
run config): the in-process engine's grid, with node ids random per grid and a way to make the
server's n-th training exchange fail, as a SuperLink that went away would."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import make_client_app
from server.engines.inprocess import InProcessGrid
from server.server_app import make_server_app


def run_config(*overrides: str, **keys: Any) -> dict[str, Any]:
    """A run config as ``flwr run --run-config`` gives it: ``config-overrides`` joined with ``;``."""
    return {"config-overrides": ";".join(overrides), **keys}


class LoopbackGrid(InProcessGrid):
    """``fail_at_train``: the server's n-th training exchange raises."""

    def __init__(
        self, run_config: Mapping[str, Any], nodes: int, state_dir: Path, fail_at_train: int = 0,
        client_app: ClientApp | None = None, node_config: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        node_config = {"state-dir": str(state_dir), **(node_config or {})}
        super().__init__(client_app or make_client_app(), nodes, run_config, node_config=node_config)
        self.fail_at_train, self.trains = fail_at_train, 0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.trains += 1
            if self.trains == self.fail_at_train:
                raise ConnectionError("the SuperLink went away")
        return super().send_and_receive(messages, timeout=timeout)


def as_server_task(grid: Grid) -> None:
    """What Flower sets before it calls a ServerApp on ``grid`` (the grid's messages name the task)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SUPERLINK_NODE_ID


def serve(grid: Grid, config: Mapping[str, Any], app: ServerApp | None = None) -> None:
    """``app`` (by default ``server.server_app.app``) as Flower calls it."""
    as_server_task(grid)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))
    (app or make_server_app())(grid, context)


def run_in_process(
    tmp_path: Path, name: str, *overrides: str, nodes: int = 3, fail_at_train: int = 0,
    client_app: ClientApp | None = None, node_config: Mapping[str, Any] | None = None, **keys: Any,
) -> Path:  # fmt: skip
    """Serve one run of ``overrides`` (plus ``output.run_dir``) over a :class:`LoopbackGrid` (``client_app`` and
    ``node_config`` as it takes them); its run directory."""
    run_dir = tmp_path / name
    config = run_config(*overrides, f"output.run_dir={run_dir}", **keys)
    grid = LoopbackGrid(config, nodes, tmp_path / f"{name}-state", fail_at_train, client_app, node_config)
    serve(grid, config)
    return run_dir
