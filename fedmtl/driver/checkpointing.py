"""Checkpoint and resume as one callback: the server's state is written every ``checkpoint.every``
rounds; a resumed run restores the last one and cuts the run files back to its round, so a resumed
run appends exactly what an uninterrupted one writes."""

from __future__ import annotations

from fedmtl.core.errors import FederationError
from fedmtl.core.files import iter_rows
from fedmtl.core.layout import CLIENTS_FILE, ROLLBACK_FILE, SERVER_FILE
from fedmtl.core.protocol import EVAL, PERSONAL
from fedmtl.driver.loop import Callback, RunState
from fedmtl.driver.schedule import is_checkpoint_round
from fedmtl.runfiles.checkpoint import (
    ServerCheckpoint,
    load_server_checkpoint,
    save_server_checkpoint,
    truncate_rows_after,
)

RUN_TABLES = (SERVER_FILE, CLIENTS_FILE, ROLLBACK_FILE)


class Checkpointing(Callback):
    def on_run_start(self, state: RunState) -> None:
        """Restore the last checkpoint when resuming (a restart before the first one starts over)."""
        if not state.resume:
            return
        run = state.run
        checkpoint = load_server_checkpoint(run)
        if checkpoint is None and state.attempt == 0:
            raise FederationError(f"no checkpoint in {run.path} to resume from")
        done = checkpoint.server_round if checkpoint else 0
        if checkpoint is not None:
            try:
                state.algorithm.load_state_dict(checkpoint.state)
            except ValueError as err:
                raise FederationError(str(err)) from None
        for table in (run.metrics_path, *(run.path / name for name in RUN_TABLES)):
            truncate_rows_after(table, done if checkpoint else -1)
        state.done = state.durable = done
        if done:
            state.curves.add(r for r in iter_rows(run.metrics_path) if r["split"] in (EVAL, PERSONAL))

    def on_round_end(self, state: RunState, server_round: int) -> None:
        if not state.failed and is_checkpoint_round(state.cfg, server_round):
            save_server_checkpoint(state.run, ServerCheckpoint(server_round, state.algorithm.state_dict()))
            state.durable = server_round
