"""The Flower ServerApp. ``app`` reads its config from the run config (``flwr run``, deployment);
``simulate.py`` builds one with :func:`make_server_app` around an already validated config."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.run_config import config_from_run_config
from fedmtl.runfiles.rundir import RunDirectory
from server.loop import run_federation


def make_server_app(
    cfg: ExperimentConfig | None = None,
    run: RunDirectory | None = None,
    resume: bool = False,
    attempt: int = 0,
    client_state_dir: str | None = None,
    echo: Callable[[str], None] | None = print,
) -> ServerApp:
    """``client_state_dir``: where simulated clients persist private state (a deployed SuperNode
    names its own with ``--node-config state-dir=...``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = cfg or config_from_run_config(context.run_config)
        run_dir = run or RunDirectory.create(config)
        run_federation(
            grid, config, run_dir, echo=echo, resume=resume, attempt=attempt, client_state_dir=client_state_dir
        )

    return app


app = make_server_app()
