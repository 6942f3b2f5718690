"""The round loop: evaluate at round 0, then train -> aggregate -> evaluate, recording everything.

It drives :class:`EncoderStrategy`'s hooks itself (rather than ``Strategy.start``) so that
round 0 is evaluated with the clients' private heads and every reply is recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedmtl import protocol
from fedmtl.config import ExperimentConfig
from fedmtl.models import initial_shared_state
from fedmtl.recorder import Recorder
from fedmtl.rundir import SUMMARY_JSON, SUMMARY_MD, RunDirectory
from fedmtl.server_update import ServerUpdater
from fedmtl.summary import format_table, task_summary
from server.strategy import EncoderStrategy

log = logging.getLogger(__name__)

NODE_WAIT_S = 120.0


class FederationError(RuntimeError):
    """The federation could not run (no clients connected, ...)."""


def wait_for_nodes(grid: Grid, count: int, timeout_s: float = NODE_WAIT_S) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of {count} clients connected within {timeout_s:.0f} s")
        time.sleep(0.05)
    return nodes


def _reports(replies: list[Message]) -> list[dict]:
    return [dict(m.content[protocol.METRICS]) for m in replies if not m.has_error() and protocol.METRICS in m.content]


def _progress_line(server_round: int, rounds: int, seconds: float, summary: list[dict]) -> str:
    tasks = "  ".join(f"{s['task']} {s['metric']}={s['value_final']:.3f}" for s in summary)
    return f"round {server_round:>3}/{rounds}  {seconds:6.2f}s  {tasks}"


def run_federation(
    grid: Grid, cfg: ExperimentConfig, run: RunDirectory, echo: Callable[[str], None] | None = print
) -> list[dict]:
    """Run ``cfg.rounds`` rounds; write metrics, encoder and summary into ``run``; return the summary."""
    wait_for_nodes(grid, cfg.clients.count)
    specs = cfg.data.task_specs()
    updater = ServerUpdater(
        initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape()),
        cfg.server.aggregator,
        cfg.server.optimizer,
        seed=cfg.seed,
        device=cfg.server.device,
    )
    strategy = EncoderStrategy(updater, cfg.server.fraction_fit, seed=cfg.seed)
    recorder = Recorder(run)
    arrays = ArrayRecord(updater.global_state())
    timeout = cfg.server.round_timeout_s

    def evaluate(server_round: int) -> list[dict]:
        replies = list(grid.send_and_receive(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid), timeout=timeout))
        reports = _reports(replies)
        recorder.record_clients(server_round, protocol.EVAL, reports)
        recorder.record_clients(server_round, protocol.PERSONAL, reports)
        return task_summary(recorder.eval_rows, specs)

    summary = evaluate(0)
    for server_round in range(1, cfg.rounds + 1):
        recorder.start_round()
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        train_reports = _reports(replies)
        recorder.record_clients(server_round, protocol.TRAIN, train_reports)
        recorder.record_client_diagnostics(server_round, train_reports)
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        evaluated = server_round % cfg.eval_every == 0 or server_round == cfg.rounds
        if evaluated:
            summary = evaluate(server_round)
        report = strategy.last_train
        seconds = recorder.record_server(server_round, len(replies), report.failures, report.rejected, report.diagnostics)
        if evaluated and echo and cfg.output.progress:
            echo(_progress_line(server_round, cfg.rounds, seconds, summary))
    run.save_encoder(updater.global_state())
    run.write_json(SUMMARY_JSON, {"name": cfg.name, "seed": cfg.seed, "rounds": cfg.rounds, "tasks": summary})
    run.write_text(SUMMARY_MD, f"# {cfg.name}: per-task summary\n\n{format_table(summary)}\n")
    return summary
