"""The round driver: evaluate at round 0, then train -> aggregate -> evaluate, recording everything.

Nothing here knows Flower. An engine adapter (``server/loop.py``) implements :class:`ClientRounds`:
it sends one round's messages to the sampled clients and returns what came back, already screened
and aggregated (:class:`TrainRound`) or decoded (:class:`EvalRound`). The rules of a run live here
once: resume and truncation of the run files, the evaluation schedule (the study arms use it too),
the ``min_fit_fraction`` rule, checkpoint cadence and the run summary.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedmtl.config.experiment import ExperimentConfig, sample_size
from fedmtl.core import protocol
from fedmtl.core.files import read_rows
from fedmtl.core.layout import CLIENTS_FILE, SERVER_FILE, SUMMARY_JSON, SUMMARY_MD
from fedmtl.federation.head_averaging import HeadAverager
from fedmtl.federation.server_update import RoundDiagnostics, ServerUpdater
from fedmtl.model.networks import initial_head_state, initial_shared_state
from fedmtl.runfiles.checkpoint import (
    ServerCheckpoint,
    load_server_checkpoint,
    save_server_checkpoint,
    truncate_rows_after,
)
from fedmtl.runfiles.recorder import Recorder, attacking_clients
from fedmtl.runfiles.rundir import RunDirectory
from fedmtl.runfiles.summary import EvalCurves, format_table, task_summary


class FederationError(RuntimeError):
    """The federation could not go on (no clients connected, too few valid updates, ...)."""


class WorkerPoolDied(FederationError):
    """Simulation workers died; the run restarts from its last checkpoint (``checkpoint.restarts``)."""


# --- the schedule of a run ------------------------------------------------------------------------


def is_evaluation_round(cfg: ExperimentConfig, server_round: int) -> bool:
    """Round 0, every ``eval_every``-th round and the last round are evaluated."""
    return server_round % cfg.eval_every == 0 or server_round == cfg.rounds


def evaluation_rounds(cfg: ExperimentConfig) -> list[int]:
    return [r for r in range(cfg.rounds + 1) if is_evaluation_round(cfg, r)]


def is_checkpoint_round(cfg: ExperimentConfig, server_round: int) -> bool:
    return bool(cfg.checkpoint.every) and server_round % cfg.checkpoint.every == 0


def updates_needed(cfg: ExperimentConfig, sampled: int) -> int:
    """Valid updates a round needs to be aggregated (``server.min_fit_fraction`` of the sampled, at least one)."""
    return max(math.ceil(cfg.server.min_fit_fraction * sampled), 1)


# --- who trains and who is evaluated ---------------------------------------------------------------


class ClientSampler:
    """Seeded sampling of client ids: ``round(fraction * n)`` of them (at least one), in client-id order.

    Training samples come from one generator whose state is checkpointed; evaluation samples from a
    fresh generator per round (they need no checkpointed state).
    """

    def __init__(self, seed: int, fraction_train: float, fraction_evaluate: float) -> None:
        self.seed = seed
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.rng = random.Random(seed)

    @property
    def needs_client_ids(self) -> bool:
        return self.fraction_train < 1 or self.fraction_evaluate < 1

    def train(self, client_ids: Iterable[int]) -> list[int]:
        return sample(client_ids, self.fraction_train, self.rng)

    def evaluate(self, client_ids: Iterable[int], server_round: int) -> list[int]:
        return sample(client_ids, self.fraction_evaluate, random.Random(f"{self.seed}/evaluate/{server_round}"))


def sample(client_ids: Iterable[int], fraction: float, rng: random.Random) -> list[int]:
    ordered = sorted(client_ids)
    count = sample_size(len(ordered), fraction)
    if count >= len(ordered):
        return ordered
    return sorted(rng.sample(ordered, count))


# --- what an engine returns per round ------------------------------------------------------------


@dataclass
class TrainRound:
    """One training round as the engine saw it: replies screened, accepted updates aggregated."""

    sampled: int = 0  # messages sent
    replies: int = 0  # replies received (errors included)
    accepted: list[int] = field(default_factory=list)  # client ids whose update was aggregated
    rejected: list[tuple[int | None, str]] = field(default_factory=list)  # (client id, reason)
    failures: int = 0  # error replies
    diagnostics: RoundDiagnostics | None = None  # None when nothing was aggregated
    reports: list[dict[str, Any]] = field(default_factory=list)  # the clients' metric records
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class EvalRound:
    reports: list[dict[str, Any]] = field(default_factory=list)
    bytes_down: int = 0


class ClientRounds(Protocol):
    """What an engine adapter provides to :class:`RoundDriver`."""

    def train(self, server_round: int, config: Mapping[str, Any]) -> TrainRound:
        """Send the global state to the sampled clients, screen and aggregate their replies (steps ``server``)."""

    def evaluate(self, server_round: int, config: Mapping[str, Any]) -> EvalRound:
        """Send the global state to the clients sampled for evaluation; return their metric records."""


# --- the server's state --------------------------------------------------------------------------


@dataclass
class ServerState:
    """Everything the server carries from round to round, and checkpoints."""

    updater: ServerUpdater
    sampler: ClientSampler
    head_averager: HeadAverager | None = None  # only when heads are federated (the fed_full design)

    @classmethod
    def initial(cls, cfg: ExperimentConfig) -> ServerState:
        shape = cfg.data.image_shape()
        updater = ServerUpdater(
            initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, shape),
            cfg.server.aggregator, cfg.server.optimizer, seed=cfg.seed, device=cfg.server.device,
            gramian_precision=cfg.server.gramian_precision, personalisation=cfg.server.personalisation,
        )  # fmt: skip
        heads = None
        if cfg.server.federate_heads:
            heads = HeadAverager(
                initial_head_state(cfg.model, cfg.data.feature_dim(), cfg.data.task_specs(), cfg.seed, shape),
                across_tasks=cfg.server.heads_across_tasks,
            )
        return cls(updater, ClientSampler(cfg.seed, cfg.server.fraction_fit, cfg.server.fraction_evaluate), heads)

    def global_state(self) -> dict:
        """What the clients receive: the shared encoder (and the heads, when they are federated)."""
        heads = self.head_averager.state_dict() if self.head_averager else {}
        return {**self.updater.global_state(), **heads}

    @property
    def needs_client_ids(self) -> bool:
        """Whether the engine must know which client each node plays (sampling, per-client encoders)."""
        return self.sampler.needs_client_ids or self.updater.personal is not None

    def client_state(self, client_id: int) -> dict | None:
        """What client ``client_id`` receives when it differs from :meth:`global_state` (its own
        encoder under ``server.personalisation``), else None."""
        if self.updater.client_offset(client_id) is None:
            return None
        heads = self.head_averager.state_dict() if self.head_averager else {}
        return {**self.updater.client_state(client_id), **heads}

    def checkpoint(self, server_round: int) -> ServerCheckpoint:
        heads = self.head_averager.state_dict() if self.head_averager else None
        return ServerCheckpoint(server_round, self.updater.state_dict(), self.sampler.rng.getstate(), heads)

    def restore(self, checkpoint: ServerCheckpoint) -> None:
        if (self.head_averager is None) != (checkpoint.heads is None):
            raise FederationError(
                "the checkpoint and server.federate_heads disagree on federated heads: resume with the run's config"
            )
        self.updater.load_state_dict(checkpoint.updater)
        if self.head_averager is not None and checkpoint.heads is not None:
            self.head_averager.load_state_dict(checkpoint.heads)
        self.sampler.rng.setstate(checkpoint.sampler)


RUN_TABLES = (SERVER_FILE, CLIENTS_FILE)


def restore_run(run: RunDirectory, state: ServerState, resume: bool, attempt: int) -> int:
    """The last round already done in ``run`` (0 for a fresh run); restores ``state`` and cuts the
    run files back to that round, so a resumed run appends exactly what an uninterrupted one writes."""
    checkpoint = load_server_checkpoint(run) if resume else None
    if resume and checkpoint is None and attempt == 0:
        raise FederationError(f"no checkpoint in {run.path} to resume from")
    if not resume:
        return 0
    done = checkpoint.server_round if checkpoint else 0
    if checkpoint is not None:
        state.restore(checkpoint)
    for table in (run.metrics_path, *(run.path / name for name in RUN_TABLES)):
        truncate_rows_after(table, done if checkpoint else -1)  # restarted before the first checkpoint: start over
    return done


def write_run_summary(run: RunDirectory, cfg: ExperimentConfig, curves: EvalCurves) -> list[dict]:
    """``summary.json``/``summary.md`` from the evaluation curves; returns the per-task summary."""
    specs = cfg.data.task_specs()
    summary = task_summary(curves, specs, protocol.EVAL)
    personal = task_summary(curves, specs, protocol.PERSONAL)
    overview: dict[str, Any] = {"name": cfg.name, "seed": cfg.seed, "rounds": cfg.rounds, "tasks": summary}
    text = f"# {cfg.name}: per-task summary\n\n{format_table(summary)}\n"
    if personal:  # soft sharing: each client's personalised copy, evaluated on the same data
        overview["personal"] = personal
        text += f"\n## Personalised copies (model.sharing soft)\n\n{format_table(personal)}\n"
    run.write_json(SUMMARY_JSON, overview)
    run.write_text(SUMMARY_MD, text)
    return summary


def progress_line(server_round: int, rounds: int, seconds: float, summary: Sequence[Mapping[str, Any]]) -> str:
    tasks = "  ".join(f"{s['task']} {s['metric']}={s['value_final']:.3f}" for s in summary)
    return f"round {server_round:>3}/{rounds}  {seconds:6.2f}s  {tasks}"


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class RoundDriver:
    """Runs ``cfg``'s rounds over an engine's :class:`ClientRounds`, writing everything into ``run``."""

    cfg: ExperimentConfig
    run: RunDirectory
    state: ServerState
    echo: Callable[[str], None] | None = print
    attempt: int = 0  # restarts after dead workers so far (clients draw their faults per attempt)
    client_state_dir: str | None = None  # where simulated clients persist private state

    def round_config(self, done: int, durable: int) -> dict[str, Any]:
        config: dict[str, Any] = {
            protocol.RESUME_ROUND: done,
            protocol.DURABLE_ROUND: durable,
            protocol.ATTEMPT: self.attempt,
            protocol.CLIENTS_COUNT: self.cfg.clients.count,
        }
        if self.client_state_dir:
            config[protocol.STATE_DIR] = self.client_state_dir
        return config

    def run_rounds(self, rounds: ClientRounds, done: int = 0) -> list[dict]:
        """Rounds ``done + 1 .. cfg.rounds`` (round 0's evaluation too when ``done == 0``); returns the summary."""
        recorder = Recorder(self.run, resume_after=done)
        try:
            return self._rounds(rounds, done, recorder)
        finally:
            recorder.close()

    def _rounds(self, rounds: ClientRounds, done: int, recorder: Recorder) -> list[dict]:
        cfg, run = self.cfg, self.run
        specs = cfg.data.task_specs()
        curves = EvalCurves(specs)
        if done:
            curves.add(r for r in read_rows(run.metrics_path) if r["split"] in (protocol.EVAL, protocol.PERSONAL))
        durable = done

        def evaluate(server_round: int) -> tuple[list[dict], int]:
            result = rounds.evaluate(server_round, self.round_config(done, durable))
            curves.add(recorder.record_clients(server_round, protocol.EVAL, result.reports))
            curves.add(recorder.record_clients(server_round, protocol.PERSONAL, result.reports))
            return task_summary(curves, specs, protocol.EVAL), result.bytes_down

        summary = evaluate(0)[0] if done == 0 else task_summary(curves, specs, protocol.EVAL)
        for server_round in range(done + 1, cfg.rounds + 1):
            recorder.start_round()
            result = rounds.train(server_round, self.round_config(done, durable))
            recorder.record_clients(server_round, protocol.TRAIN, result.reports)
            recorder.record_client_diagnostics(server_round, result.reports)
            traffic = {"bytes_up": result.bytes_up, "bytes_down": result.bytes_down}
            adversarial = attacking_clients(result.reports)
            if len(result.accepted) < updates_needed(cfg, result.sampled):
                recorder.record_server(
                    server_round, result.replies, result.failures, result.rejected, None, traffic, adversarial
                )
                raise FederationError(
                    f"round {server_round}: only {len(result.accepted)} of {result.sampled} sampled clients sent a valid update "
                    f"(server.min_fit_fraction = {cfg.server.min_fit_fraction}); stopping. Files up to round {server_round - 1} are complete."
                )
            evaluated = is_evaluation_round(cfg, server_round)
            if evaluated:
                summary, eval_bytes = evaluate(server_round)
                traffic["bytes_down"] += eval_bytes
            seconds = recorder.record_server(
                server_round, result.replies, result.failures, result.rejected, result.diagnostics, traffic, adversarial
            )
            if is_checkpoint_round(cfg, server_round):
                save_server_checkpoint(run, self.state.checkpoint(server_round))
                durable = server_round
            if evaluated and self.echo and cfg.output.progress:
                self.echo(progress_line(server_round, cfg.rounds, seconds, summary))
        run.save_encoder(self.state.updater.global_state())
        return write_run_summary(run, cfg, curves)
