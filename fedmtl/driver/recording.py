"""The run files' rows: per-client reports become tidy metric rows (``metrics.jsonl``/``.csv``), per-client
diagnostics (``clients.jsonl``) and one server row per round (``server.jsonl``). A round-driver callback."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from fedmtl.core import protocol
from fedmtl.core.files import RowWriter
from fedmtl.core.layout import CLIENTS_FILE, ROLLBACK_FILE, SERVER_FILE
from fedmtl.core.messages import Exchange
from fedmtl.data.task_kinds import TASK_KINDS
from fedmtl.driver.loop import Callback, RunState
from fedmtl.federation.algorithm import TrainResult
from fedmtl.federation.groups import client_affinity, mean_task_affinity
from fedmtl.federation.server_update import RoundDiagnostics
from fedmtl.local.data_checks import SHORTCUT_CHANCE, SHORTCUT_EVAL, SHORTCUT_SOURCE, SHORTCUT_TRAIN
from fedmtl.local.gates import unpack
from fedmtl.local.rollback import OPTIONS

log = logging.getLogger(__name__)
BASE_COLUMNS = ("round", "split", "client", "task", "num_examples", "loss", "weight")
METRIC_COLUMNS = (
    *dict.fromkeys(name for kind in TASK_KINDS.values() for name in kind.metric_names),
    SHORTCUT_TRAIN,  # the data check (eval rows): the best single input feature's share of the label, training data
    SHORTCUT_EVAL,  # ... the same feature's on the client's held-out data (a leaked label: high, then low)
    SHORTCUT_CHANCE,  # ... and the best feature's share with the training labels shuffled (chance level)
    SHORTCUT_SOURCE,  # ... of which task's label (its position in the suite's tasks; another's: a leak between tasks)
)
SERVER_COLUMNS = (
    "round", "started_at", "seconds", "replies", "failures", "rejected", "clients", "weights",
    "conflict_fraction", "aggregate_norm", "mean_norm", "cosines_upper", "bytes_up", "bytes_down",
    "failed",  # each failed training reply's reason (a timeout names the node and its participant)
    "personal_alphas",  # server.personalisation: each row's weight on its own update (null when off)
    "adversarial",  # ids of the clients whose reply this round carried a forged update (faults.attack)
    "cohorts",  # with several cohorts (server.cohorts): each one's diagnostics, the fields above
    "update_norms",  # each aggregated row's L2 norm (row order: clients)
    "groups",  # server.grouping: cohort key -> client ids after the round's regrouping
    "splits",  # server.grouping: the groups split this round ({group, into})
    "task_affinity",  # client.affinity_every: lookahead affinity per ordered task pair, mean over the replies
    "client_affinity",  # server.client_affinity_every: Z(from -> to) of last round's updates per client pair
    "clip_norm",  # privacy.noise_at: server: the bound the updates were clipped to (adaptive clipping moves it)
    "epsilon",  # privacy with noise: the (epsilon, privacy.delta) spent after this round
    # privacy.secure_aggregation: {contributors, clipped_values, seconds, clients, mean_update_norm} of the round
    "secure_aggregation",
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
    "task_affinity",  # client.affinity_every: lookahead affinity Z(from -> to) per ordered task pair
    "sample_epsilon",  # privacy.sample_level: the epsilon the client's DP-SGD has spent by this round
    "gates",  # model.sharing mmoe: per task, {usage: mean gate weight per expert, entropy, uniform_entropy}
)


ROLLBACK_COLUMNS = ("round", "client", "task", "choice", *(f"{s}_{o}" for s in ("val", "eval") for o in OPTIONS))


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


class Recorder(Callback):
    """Appends every round's rows to the run files as they come (a resumed run after its last kept round)."""

    def on_run_start(self, state: RunState) -> None:
        run = state.run
        self.metrics = RowWriter(run.metrics_path, BASE_COLUMNS + METRIC_COLUMNS)
        self.server = RowWriter(run.path / SERVER_FILE, SERVER_COLUMNS)
        self.clients = RowWriter(run.path / CLIENTS_FILE, CLIENT_COLUMNS)
        self.rollback = (
            RowWriter(run.path / ROLLBACK_FILE, ROLLBACK_COLUMNS) if state.cfg.client.rollback.enabled else None
        )
        self._round_start, self._round_started_at = time.perf_counter(), time.time()

    def on_round_start(self, state: RunState, server_round: int) -> None:
        """The round's server row covers training, aggregation and evaluation."""
        self._round_start, self._round_started_at = time.perf_counter(), time.time()

    def on_trained(self, state: RunState, server_round: int, result: TrainResult, exchange: Exchange) -> None:
        reports = result.reports
        state.metric_rows(self.record_clients(server_round, protocol.TRAIN, reports))
        self.record_client_diagnostics(server_round, reports)
        for reason in result.failed:
            log.warning("round %d: a participant failed: %s", server_round, reason)
        for client, reason in result.rejected:
            log.warning("round %d: rejected the update of client %s: %s", server_round, client, reason)
        state.row.update(
            replies=result.replies,
            failures=result.failures,
            failed=result.failed,
            rejected=[{"client": c, "reason": r} for c, r in result.rejected],
            adversarial=attacking_clients(reports),
            bytes_up=sum(reply.payload_bytes for reply in exchange.replies),
            bytes_down=exchange.payload_bytes,
            **server_diagnostics(result),
        )
        if result.groups is not None:
            state.row.update(groups=result.groups, splits=result.splits)
        if result.secure is not None:
            state.row["secure_aggregation"] = result.secure
        affinity = affinity_rows(mean_task_affinity(reports))
        if affinity:
            state.row["task_affinity"] = affinity
        between_clients = affinity_rows(client_affinity(reports))
        if between_clients:
            state.row["client_affinity"] = between_clients

    def on_evaluated(self, state: RunState, server_round: int, reports: Sequence[dict], exchange: Exchange) -> None:
        for reply in exchange.replies:
            if reply.error is not None:
                log.warning(
                    "round %d: evaluation failed on participant %s: %s", server_round, reply.participant, reply.error
                )
        for split in (protocol.EVAL, protocol.PERSONAL):
            state.metric_rows(self.record_clients(server_round, split, reports))
        if self.rollback is not None:
            rows = [row for report in reports for row in task_rows(server_round, protocol.ROLLBACK, report)]
            for row in rows:
                row["choice"] = OPTIONS[int(row["choice"])]
            self.rollback.write(sorted(rows, key=lambda r: (r["client"], r["task"])))
        if server_round:
            state.row["bytes_down"] = state.row.get("bytes_down", 0) + exchange.payload_bytes

    def on_round_end(self, state: RunState, server_round: int) -> None:
        seconds = time.perf_counter() - self._round_start
        row = {"round": server_round, "started_at": round(self._round_started_at, 4), "seconds": round(seconds, 4)}
        state.row = {**row, **state.row}
        state.seconds = seconds
        self.server.write([state.row])

    def record_clients(self, server_round: int, split: str, reports: Sequence[Mapping[str, Any]]) -> list[dict]:
        rows = [row for report in reports for row in task_rows(server_round, split, report)]
        rows.sort(key=lambda r: (r["client"], r["task"]))
        self.metrics.write(rows)
        return rows

    def record_client_diagnostics(self, server_round: int, reports: Sequence[Mapping[str, Any]]) -> None:
        rows = []
        for report in sorted(reports, key=lambda r: (r[protocol.CLIENT_ID], r.get(protocol.PARTICIPANT, 0))):
            train = protocol.unflatten_task_metrics(report, protocol.TRAIN)
            gates = protocol.unflatten_task_metrics(report, protocol.GATE)
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
                    "sample_epsilon": report.get(protocol.SAMPLE_EPSILON),
                    "task_affinity": affinity_rows(protocol.unflatten_pair_metrics(report, protocol.TASK_AFFINITY)),
                    "gates": {task: unpack(m) for task, m in sorted(gates.items())} or None,
                }
            )
        self.clients.write(rows)


def affinity_rows(affinity: Mapping[tuple[Any, Any], float]) -> list[dict[str, Any]]:
    """``[{from, to, affinity}]`` per ordered pair (of tasks or clients), sorted."""
    return [{"from": a, "to": b, "affinity": v} for (a, b), v in sorted(affinity.items())]


def server_diagnostics(result: TrainResult) -> dict[str, Any]:
    """The aggregation's diagnostics for the server row: at the top level with one cohort, per cohort
    (``cohorts``) with several; nothing for cohorts that aggregate nothing (local training)."""
    aggregated = [(c.key, c.diagnostics) for c in result.cohorts if c.diagnostics is not None]
    if len(result.cohorts) == 1:
        return _fields(aggregated[0][1]) if aggregated else {}
    return {"cohorts": [{"cohort": key, **_fields(d)} for key, d in aggregated]} if aggregated else {}


def _fields(diagnostics: RoundDiagnostics) -> dict[str, Any]:
    """The diagnostics' fields as they are: ``asdict`` deep-copied every cosine (K = 300: 45,000 a round,
    0.13 s of the driver's time)."""
    return {f.name: getattr(diagnostics, f.name) for f in fields(diagnostics)}
