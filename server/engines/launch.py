"""Running a ServerApp against a grid in this process, as Flower's ``run_simulation`` does beside its engine."""

from __future__ import annotations

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import ServerApp
from flwr.supercore.task_identity import TaskIdentity

from server.engines.placed import PlacedGrid


def run_server_app(server_app: ServerApp, grid: PlacedGrid) -> None:
    """Run ``server_app`` against ``grid`` in this thread (Flower's ``run_simulation`` uses a thread
    beside its engine; here the engine works inside ``send_and_receive``)."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = grid.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(grid.run_config)
    )
    server_app(grid=grid, context=context)
