"""Turns per-client reports into tidy metric rows and per-round server diagnostics."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from fedmtl.core import protocol
from fedmtl.core.files import RowWriter
from fedmtl.core.layout import CLIENTS_FILE, SERVER_FILE
from fedmtl.data.task_kinds import TASK_KINDS
from fedmtl.federation.server_update import RoundDiagnostics
from fedmtl.runfiles.rundir import RunDirectory
from fedmtl.runfiles.tensorboard import TensorBoardSink

BASE_COLUMNS = ("round", "split", "client", "task", "num_examples", "loss", "weight")
METRIC_COLUMNS = tuple(dict.fromkeys(name for kind in TASK_KINDS.values() for name in kind.metric_names))
SERVER_COLUMNS = (
    "round", "started_at", "seconds", "replies", "failures", "rejected", "clients", "weights",
    "conflict_fraction", "aggregate_norm", "mean_norm", "cosines_upper", "bytes_up", "bytes_down",
    "personal_alphas",  # server.personalisation: each row's weight on its own update (null when off)
    "adversarial",  # ids of the clients whose reply this round carried a forged update (faults.attack)
)  # fmt: skip


CLIENT_COLUMNS = (
    "round",
    "client",
    "num_examples",
    "train_loss",
    "assigned_gpu",
    "on_gpu",
    "task_weights",
    "task_cosines",
    "attacked",  # the client forged its encoder update this round (faults.attack)
)


def attacking_clients(reports: Sequence[Mapping[str, Any]]) -> list[int]:
    """Ids of the replies that report an injected attack (``protocol.ATTACKED``), ascending."""
    return sorted(int(r[protocol.CLIENT_ID]) for r in reports if r.get(protocol.ATTACKED))


def pair_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per task pair: mean gradient cosine and principal angles (degrees) measured this round."""
    cosines = protocol.unflatten_pair_metrics(report, protocol.TASK_COSINE)
    smallest = protocol.unflatten_pair_metrics(report, protocol.TASK_ANGLE_MIN)
    mean = protocol.unflatten_pair_metrics(report, protocol.TASK_ANGLE_MEAN)
    return [
        {
            "tasks": list(pair),
            "cosine": cosines.get(pair),
            "angle_min": smallest.get(pair),
            "angle_mean": mean.get(pair),
        }
        for pair in sorted(set(cosines) | set(smallest))
    ]


def task_rows(server_round: int, split: str, client_metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per task in one client's flat metrics (``split/task/metric`` keys)."""
    client = int(client_metrics[protocol.CLIENT_ID])
    return [
        {"round": server_round, "split": split, "client": client, "task": task, **metrics}
        for task, metrics in sorted(protocol.unflatten_task_metrics(client_metrics, split).items())
    ]


class Recorder:
    def __init__(self, run: RunDirectory, resume_after: int = 0) -> None:
        """``resume_after``: the last round already in the run files (a resumed run appends after it)."""
        self.metrics = RowWriter(run.metrics_path, BASE_COLUMNS + METRIC_COLUMNS)
        self.server = RowWriter(run.path / SERVER_FILE, SERVER_COLUMNS)
        self.clients = RowWriter(run.path / CLIENTS_FILE, CLIENT_COLUMNS)
        self.tensorboard = TensorBoardSink(run.path, resume_after) if run.tensorboard else None
        self._round_start = time.perf_counter()
        self._round_started_at = time.time()

    def close(self) -> None:
        """Release the optional writers (the run files are closed after every write)."""
        if self.tensorboard is not None:
            self.tensorboard.close()

    def start_round(self) -> None:
        """Mark the start of a round; its server row covers training, aggregation and evaluation."""
        self._round_start = time.perf_counter()
        self._round_started_at = time.time()

    def record_clients(self, server_round: int, split: str, reports: Sequence[Mapping[str, Any]]) -> list[dict]:
        rows = [row for report in reports for row in task_rows(server_round, split, report)]
        rows.sort(key=lambda r: (r["client"], r["task"]))
        self.metrics.write(rows)
        if self.tensorboard is not None:
            self.tensorboard.metric_rows(rows)
        return rows

    def record_client_diagnostics(self, server_round: int, reports: Sequence[Mapping[str, Any]]) -> None:
        rows = []
        for report in sorted(reports, key=lambda r: r[protocol.CLIENT_ID]):
            train = protocol.unflatten_task_metrics(report, protocol.TRAIN)
            rows.append(
                {
                    "round": server_round,
                    "client": int(report[protocol.CLIENT_ID]),
                    "num_examples": report.get(protocol.NUM_EXAMPLES),
                    "train_loss": report.get(protocol.TRAIN_LOSS),
                    "assigned_gpu": report.get(protocol.ASSIGNED_GPU),
                    "on_gpu": report.get(protocol.ON_GPU),
                    "task_weights": {task: m.get("weight") for task, m in sorted(train.items())},
                    "task_cosines": pair_rows(report),
                    "attacked": bool(report.get(protocol.ATTACKED)),
                }
            )
        self.clients.write(rows)

    def record_server(
        self,
        server_round: int,
        replies: int,
        failures: int,
        rejected: Sequence[tuple[int | None, str]],
        diagnostics: RoundDiagnostics | None,
        traffic: Mapping[str, int] | None = None,
        adversarial: Sequence[int] = (),
    ) -> float:
        """Write the round's server row (``traffic``: bytes_up/bytes_down of parameter payloads; ``adversarial``:
        :func:`attacking_clients` of the round's reports); return its wall seconds."""
        seconds = time.perf_counter() - self._round_start
        row: dict[str, Any] = {
            "round": server_round,
            "started_at": round(self._round_started_at, 4),
            "seconds": round(seconds, 4),
            "replies": replies,
            "failures": failures,
            "rejected": [{"client": c, "reason": r} for c, r in rejected],
            "adversarial": list(adversarial),
        }
        if diagnostics is not None:
            row.update(asdict(diagnostics))
        row.update(traffic or {})
        self.server.write([row])
        if self.tensorboard is not None:
            self.tensorboard.server_row(row)
        return seconds
