"""A Flower strategy that aggregates only the shared encoder with a pluggable aggregator.

It owns no algorithm: replies are screened with ``fedmtl.protocol.check_update`` and handed
to ``fedmtl.server_update.ServerUpdater``. Usable with ``Strategy.start`` or fedmtl's own loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmtl import protocol
from fedmtl.head_averaging import HeadAverager, split_heads
from fedmtl.server_update import RoundDiagnostics, ServerUpdater

log = logging.getLogger(__name__)


@dataclass
class TrainRoundReport:
    """What happened to each reply in the last training round."""

    accepted: list[int] = field(default_factory=list)
    rejected: list[tuple[int | None, str]] = field(default_factory=list)
    failures: int = 0
    diagnostics: RoundDiagnostics | None = None


def _client_id(message: Message) -> int | None:
    metrics = message.content.metric_records.get(protocol.METRICS)
    if metrics is None or protocol.CLIENT_ID not in metrics:
        return None
    return int(metrics[protocol.CLIENT_ID])


def screen_envelope(message: Message) -> str | None:
    """Why a training reply's records (one ArrayRecord, the metrics it needs) are unusable, or ``None``."""
    content = message.content
    if set(content.array_records) != {protocol.ARRAYS}:
        return f"expected exactly one ArrayRecord '{protocol.ARRAYS}', got {sorted(content.array_records)}"
    metrics = content.metric_records.get(protocol.METRICS)
    if metrics is None or protocol.NUM_EXAMPLES not in metrics or protocol.CLIENT_ID not in metrics:
        return f"metrics must carry '{protocol.NUM_EXAMPLES}' and '{protocol.CLIENT_ID}'"
    if not float(metrics[protocol.NUM_EXAMPLES]) > 0:
        return f"'{protocol.NUM_EXAMPLES}' must be positive"
    return None


def sample_nodes(nodes: Iterable[int], fraction: float, rng: random.Random, order: dict[int, int] | None = None) -> list[int]:
    """``round(fraction * n)`` nodes (at least one), drawn in the stable order of their client ids.

    Flower's node ids are random per run; ordering by client id first keeps the sample, and so the
    run, reproducible from the seed.
    """
    ordered = sorted(nodes, key=lambda node: (order or {}).get(node, node))
    count = max(1, round(len(ordered) * fraction))
    if count >= len(ordered):
        return ordered
    return sorted(rng.sample(ordered, count), key=ordered.index)


class EncoderStrategy(Strategy):
    def __init__(
        self,
        updater: ServerUpdater,
        fraction_train: float = 1.0,
        seed: int = 0,
        max_update_norm: float | None = None,
        fraction_evaluate: float = 1.0,
        head_averager: HeadAverager | None = None,
    ) -> None:
        self.updater = updater
        self.head_averager = head_averager  # only when heads are federated (the fed_full design)
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.max_update_norm = max_update_norm
        self.seed = seed
        self.rng = random.Random(seed)
        self.client_ids: dict[int, int] = {}  # node id -> client (partition) id, when the loop has asked
        self.last_train = TrainRoundReport()

    def summary(self) -> None:
        log.info("EncoderStrategy(aggregator=%r, optimizer=%r, fraction_train=%s)",
                 self.updater.aggregator, self.updater.optimizer, self.fraction_train)  # fmt: skip

    def _messages(self, arrays: ArrayRecord, config: ConfigRecord, nodes: Iterable[int], kind: str) -> list[Message]:
        content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config})
        return [Message(content=content, message_type=kind, dst_node_id=node) for node in nodes]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sampled = sample_nodes(grid.get_node_ids(), self.fraction_train, self.rng, self.client_ids)
        config[protocol.SERVER_ROUND] = server_round
        return self._messages(arrays, config, sampled, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        report = TrainRoundReport()
        accepted: list[tuple[int, Message, dict, dict]] = []  # (client id, reply, encoder state, head state)
        expected = self.updater.layout.expected_shapes
        optional = self.head_averager.expected_shapes if self.head_averager else None
        for message in replies:
            if message.has_error():
                report.failures += 1
                log.warning("round %d: client reply failed: %s", server_round, message.error.reason.splitlines()[0][:200])
                continue
            reason = screen_envelope(message)
            if reason is None:
                state = message.content[protocol.ARRAYS].to_torch_state_dict()
                encoder, heads = split_heads(state)
                reason = protocol.check_update(state, expected, optional) or self._norm_violation(encoder)
            if reason is not None:
                report.rejected.append((_client_id(message), reason))
                log.warning("round %d: rejected update from client %s: %s", server_round, _client_id(message), reason)
                continue
            accepted.append((_client_id(message), message, encoder, heads))  # type: ignore[arg-type]
        self.last_train = report
        if not accepted:
            return None, None
        accepted.sort(key=lambda entry: entry[0])  # row order independent of arrival order: reproducible sums
        metrics = [message.content[protocol.METRICS] for _, message, _, _ in accepted]
        report.accepted = [client for client, *_ in accepted]
        if self.head_averager is not None:
            examples = [{t: v["num_examples"] for t, v in protocol.unflatten_task_metrics(m, protocol.TRAIN).items()} for m in metrics]
            self.head_averager.step([heads for *_, heads in accepted], examples)
        report.diagnostics = self.updater.step(
            client_ids=report.accepted,
            client_states=[encoder for _, _, encoder, _ in accepted],
            num_examples=[float(m[protocol.NUM_EXAMPLES]) for m in metrics],
            losses=[float(m[protocol.TRAIN_LOSS]) for m in metrics] if all(protocol.TRAIN_LOSS in m for m in metrics) else None,
        )
        summary = MetricRecord(
            {
                "conflict-fraction": report.diagnostics.conflict_fraction,
                "aggregate-norm": report.diagnostics.aggregate_norm,
                "num-accepted": len(accepted),
            }
        )
        return ArrayRecord(self.global_state()), summary

    def global_state(self) -> dict:
        """What the clients receive: the shared encoder (and the heads, when they are federated)."""
        heads = self.head_averager.state_dict() if self.head_averager else {}
        return {**self.updater.global_state(), **heads}

    def _norm_violation(self, encoder: dict) -> str | None:
        if self.max_update_norm is None:
            return None
        update = self.updater.layout.flatten(encoder)
        norm = float((update - self.updater.param.detach()).norm())
        return f"update norm {norm:.4g} exceeds server.max_update_norm {self.max_update_norm:g}" if norm > self.max_update_norm else None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[protocol.SERVER_ROUND] = server_round
        # a fresh generator per round: evaluation samples need no checkpointed state
        rng = random.Random(f"{self.seed}/evaluate/{server_round}")
        sampled = sample_nodes(grid.get_node_ids(), self.fraction_evaluate, rng, self.client_ids)
        return self._messages(arrays, config, sampled, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted mean of each task's eval loss over the clients that hold it."""
        totals: dict[str, float] = {}
        counts: dict[str, float] = {}
        for message in replies:
            if message.has_error():
                continue
            per_task = protocol.unflatten_task_metrics(message.content[protocol.METRICS], protocol.EVAL)
            for task, values in per_task.items():
                totals[task] = totals.get(task, 0.0) + values["loss"] * values["num_examples"]
                counts[task] = counts.get(task, 0.0) + values["num_examples"]
        if not totals:
            return None
        return MetricRecord({f"{protocol.EVAL}/{task}/loss": totals[task] / counts[task] for task in sorted(totals)})
