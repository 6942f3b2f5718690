"""An optional TensorBoard view of a run (``output.tensorboard: true``, the ``tensorboard`` extra).

Fed from the same rows the recorder appends to the run files, so curves can be watched live with
``tensorboard --logdir <run_dir>/tensorboard``; the run files stay the source of truth. Per round:
each (split, task, metric) as the example-weighted mean over the clients that reported it (as the
run summary weights them), and the server's scalars (round seconds, conflict fraction, norms,
bytes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmtl.core.layout import TENSORBOARD_DIR
from fedmtl.core.messages import Exchange
from fedmtl.driver.loop import Callback, RunState

SERVER_SCALARS = ("seconds", "failures", "conflict_fraction", "aggregate_norm", "mean_norm", "bytes_up", "bytes_down")
ROW_KEYS = ("round", "split", "client", "task", "num_examples")


class TensorBoardSink:
    def __init__(self, run_path: Path, resume_after: int = 0) -> None:
        """``resume_after``: the last round kept in the run files when resuming; the event files'
        later points (written before the interruption) are purged, as the run files' rows are."""
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(
            log_dir=str(run_path / TENSORBOARD_DIR), purge_step=resume_after + 1 if resume_after else None
        )

    def metric_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        totals: dict[tuple[int, str], tuple[float, float]] = {}  # (round, tag) -> (weighted sum, weight)
        for row in rows:
            weight = float(row.get("num_examples") or 0.0)  # as the run summary weights clients
            if weight <= 0:
                continue
            for name, value in row.items():
                if name in ROW_KEYS or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                key = (int(row["round"]), f"{row['split']}/{row['task']}/{name}")
                total, weights = totals.get(key, (0.0, 0.0))
                totals[key] = (total + weight * float(value), weights + weight)
        for (server_round, tag), (total, weights) in sorted(totals.items()):
            self.writer.add_scalar(tag, total / weights, server_round)
        self.writer.flush()

    def server_row(self, row: Mapping[str, Any]) -> None:
        for name in SERVER_SCALARS:
            value = row.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"server/{name}", float(value), int(row["round"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TensorBoard(Callback):
    """Mirrors each round's metric rows and server row into TensorBoard event files (after the recorder)."""

    sink: TensorBoardSink | None = None

    def on_run_start(self, state: RunState) -> None:
        self.sink = TensorBoardSink(state.run.path, state.done)

    def on_evaluated(self, state: RunState, server_round: int, reports: Sequence[dict], exchange: Exchange) -> None:
        if server_round == 0 and self.sink is not None:  # round 0 has no round end
            self.sink.metric_rows(state.round_rows)

    def on_round_end(self, state: RunState, server_round: int) -> None:
        if self.sink is not None:
            self.sink.metric_rows(state.round_rows)
            self.sink.server_row(state.row)

    def on_close(self, state: RunState) -> None:
        if self.sink is not None:
            self.sink.close()
