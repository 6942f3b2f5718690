"""The round loop: evaluate at round 0, then train -> aggregate -> evaluate, recording everything.

It drives :class:`EncoderStrategy`'s hooks itself (rather than ``Strategy.start``) so that
round 0 is evaluated with the clients' private heads and every reply is recorded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmtl import protocol
from fedmtl.checkpoint import ServerCheckpoint, load_server_checkpoint, save_server_checkpoint, truncate_rows_after
from fedmtl.config import ExperimentConfig
from fedmtl.head_averaging import HeadAverager
from fedmtl.models import initial_head_state, initial_shared_state
from fedmtl.recorder import Recorder
from fedmtl.rundir import CLIENTS_FILE, SERVER_FILE, SUMMARY_JSON, SUMMARY_MD, RunDirectory, read_rows
from fedmtl.server_update import ServerUpdater
from fedmtl.summary import EvalCurves, format_table, task_summary
from server.strategy import EncoderStrategy

log = logging.getLogger(__name__)

NODE_WAIT_S = 120.0


class FederationError(RuntimeError):
    """The federation could not go on (no clients connected, too few valid updates, ...)."""


class WorkerPoolDied(RuntimeError):
    """Ray workers died; Flower 1.41 would keep routing clients to them, so the run must restart."""


DEAD_WORKER_MARKERS = ("ActorDiedError", "RayActorError", "actor died", "ActorUnavailableError", "WorkerCrashedError")


def worker_died(replies: list[Message]) -> bool:
    return any(m.has_error() and any(mark in m.error.reason for mark in DEAD_WORKER_MARKERS) for m in replies)


def wait_for_nodes(grid: Grid, count: int, timeout_s: float = NODE_WAIT_S) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of {count} clients connected within {timeout_s:.0f} s")
        time.sleep(0.05)
    return nodes


def identify_clients(grid: Grid, nodes: list[int], timeout_s: float) -> dict[int, int]:
    """Ask every node which client (partition) it is: node ids are random per run, client ids are not."""
    content = RecordDict({protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: 0})})
    messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=node) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout_s))
    if worker_died(replies):
        raise WorkerPoolDied("a Ray worker died while the clients were being identified")
    answered = {m.metadata.src_node_id: int(m.content[protocol.METRICS][protocol.CLIENT_ID]) for m in replies if not m.has_error()}
    if len(answered) < len(nodes):
        raise FederationError(f"only {len(answered)} of {len(nodes)} clients answered when asked for their client id")
    return answered


def payload_bytes(messages: list[Message]) -> int:
    """Bytes of parameter arrays in ``messages`` (what the federation's communication cost is made of)."""
    return sum(len(array.data) for m in messages if not m.has_error() for record in m.content.array_records.values() for array in record.values())


def _reports(replies: list[Message]) -> list[dict]:
    return [dict(m.content[protocol.METRICS]) for m in replies if not m.has_error() and protocol.METRICS in m.content]


def _progress_line(server_round: int, rounds: int, seconds: float, summary: list[dict]) -> str:
    tasks = "  ".join(f"{s['task']} {s['metric']}={s['value_final']:.3f}" for s in summary)
    return f"round {server_round:>3}/{rounds}  {seconds:6.2f}s  {tasks}"


def run_federation(
    grid: Grid,
    cfg: ExperimentConfig,
    run: RunDirectory,
    echo: Callable[[str], None] | None = print,
    resume: bool = False,
    attempt: int = 0,
    client_state_dir: str | None = None,
) -> list[dict]:
    """Run the rounds of ``cfg`` (from the last checkpoint when ``resume``); write everything into ``run``."""
    nodes = wait_for_nodes(grid, len(cfg.clients.participants()))
    specs = cfg.data.task_specs()
    updater = ServerUpdater(
        initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape()),
        cfg.server.aggregator,
        cfg.server.optimizer,
        seed=cfg.seed,
        device=cfg.server.device,
    )
    strategy = EncoderStrategy(
        updater, cfg.server.fraction_fit, seed=cfg.seed, max_update_norm=cfg.server.max_update_norm,
        fraction_evaluate=cfg.server.fraction_evaluate,
        head_averager=HeadAverager(initial_head_state(cfg.model, cfg.data.feature_dim(), specs, cfg.seed, cfg.data.image_shape()))
        if cfg.server.federate_heads else None,
    )  # fmt: skip
    if cfg.server.fraction_fit < 1 or cfg.server.fraction_evaluate < 1:
        strategy.client_ids = identify_clients(grid, nodes, cfg.server.round_timeout_s)
    checkpoint = load_server_checkpoint(run) if resume else None
    if resume and checkpoint is None and attempt == 0:
        raise FederationError(f"no checkpoint in {run.path} to resume from")
    done = checkpoint.server_round if checkpoint else 0
    if checkpoint is not None:
        updater.load_state_dict(checkpoint.updater)
        if strategy.head_averager is not None and checkpoint.heads is not None:
            strategy.head_averager.load_state_dict(checkpoint.heads)
        strategy.rng.setstate(checkpoint.sampler)
        for table in (run.metrics_path, run.path / SERVER_FILE, run.path / CLIENTS_FILE):
            truncate_rows_after(table, done)
    elif resume:  # restarted before the first checkpoint: start over in the same directory
        for table in (run.metrics_path, run.path / SERVER_FILE, run.path / CLIENTS_FILE):
            truncate_rows_after(table, -1)
    recorder = Recorder(run)
    curves = EvalCurves(specs)
    if done:
        curves.add(r for r in read_rows(run.metrics_path) if r["split"] in (protocol.EVAL, protocol.PERSONAL))
    arrays = ArrayRecord(strategy.global_state())
    timeout = cfg.server.round_timeout_s
    durable = done

    def round_config() -> ConfigRecord:
        record = ConfigRecord({protocol.RESUME_ROUND: done, protocol.DURABLE_ROUND: durable, protocol.ATTEMPT: attempt})
        if client_state_dir:
            record[protocol.STATE_DIR] = client_state_dir
        return record

    traffic = {"bytes_up": 0, "bytes_down": 0}

    def evaluate(server_round: int) -> list[dict]:
        messages = list(strategy.configure_evaluate(server_round, arrays, round_config(), grid))
        traffic["bytes_down"] += payload_bytes(messages)
        reports = _reports(list(grid.send_and_receive(messages, timeout=timeout)))
        curves.add(recorder.record_clients(server_round, protocol.EVAL, reports))
        curves.add(recorder.record_clients(server_round, protocol.PERSONAL, reports))
        return task_summary(curves, specs, protocol.EVAL)

    summary = evaluate(0) if done == 0 else task_summary(curves, specs, protocol.EVAL)
    for server_round in range(done + 1, cfg.rounds + 1):
        recorder.start_round()
        traffic.update(bytes_up=0, bytes_down=0)
        messages = list(strategy.configure_train(server_round, arrays, round_config(), grid))
        traffic["bytes_down"] += payload_bytes(messages)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        traffic["bytes_up"] += payload_bytes(replies)
        if worker_died(replies):
            raise WorkerPoolDied(f"round {server_round}: a Ray worker died")
        train_reports = _reports(replies)
        recorder.record_clients(server_round, protocol.TRAIN, train_reports)
        recorder.record_client_diagnostics(server_round, train_reports)
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        report = strategy.last_train
        needed = math.ceil(cfg.server.min_fit_fraction * len(messages))
        if len(report.accepted) < max(needed, 1):
            recorder.record_server(server_round, len(replies), report.failures, report.rejected, None, traffic)
            raise FederationError(
                f"round {server_round}: only {len(report.accepted)} of {len(messages)} sampled clients sent a valid update "
                f"(server.min_fit_fraction = {cfg.server.min_fit_fraction}); stopping. Files up to round {server_round - 1} are complete."
            )
        arrays = new_arrays
        evaluated = server_round % cfg.eval_every == 0 or server_round == cfg.rounds
        if evaluated:
            summary = evaluate(server_round)
        seconds = recorder.record_server(server_round, len(replies), report.failures, report.rejected, report.diagnostics, traffic)
        if cfg.checkpoint.every and server_round % cfg.checkpoint.every == 0:
            heads = strategy.head_averager.state_dict() if strategy.head_averager else None
            save_server_checkpoint(run, ServerCheckpoint(server_round, updater.state_dict(), strategy.rng.getstate(), heads))
            durable = server_round
        if evaluated and echo and cfg.output.progress:
            echo(_progress_line(server_round, cfg.rounds, seconds, summary))
    run.save_encoder(updater.global_state())
    personal = task_summary(curves, specs, protocol.PERSONAL)
    overview: dict[str, Any] = {"name": cfg.name, "seed": cfg.seed, "rounds": cfg.rounds, "tasks": summary}
    text = f"# {cfg.name}: per-task summary\n\n{format_table(summary)}\n"
    if personal:  # soft sharing: each client's personalised copy, evaluated on the same data
        overview["personal"] = personal
        text += f"\n## Personalised copies (model.sharing soft)\n\n{format_table(personal)}\n"
    run.write_json(SUMMARY_JSON, overview)
    run.write_text(SUMMARY_MD, text)
    return summary
