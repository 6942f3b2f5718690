"""A Flower strategy that aggregates only the shared encoder with a pluggable aggregator.

It owns no algorithm and no state of its own: sampling, the encoder and its optimizer live in
``fedmtl.federation.rounds.ServerState``; replies are screened with ``fedmtl.core.protocol.check_update`` and
aggregated by ``fedmtl.federation.server_update.ServerUpdater``. :meth:`EncoderStrategy.aggregate` returns
the round's :class:`fedmtl.federation.rounds.TrainRound`; Flower's ``aggregate_train`` wraps it, so the
strategy also works under ``Strategy.start``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmtl.core import protocol
from fedmtl.core.params import split_heads
from fedmtl.federation.rounds import ServerState, TrainRound

log = logging.getLogger(__name__)


def _client_id(message: Message) -> int | None:
    metrics = message.content.metric_records.get(protocol.METRICS)
    if metrics is None or protocol.CLIENT_ID not in metrics:
        return None
    return int(protocol.as_number(metrics[protocol.CLIENT_ID]))


def screen_envelope(message: Message) -> str | None:
    """Why a training reply's records (one ArrayRecord, the metrics it needs) are unusable, or ``None``."""
    content = message.content
    if set(content.array_records) != {protocol.ARRAYS}:
        return f"expected exactly one ArrayRecord '{protocol.ARRAYS}', got {sorted(content.array_records)}"
    metrics = content.metric_records.get(protocol.METRICS)
    if metrics is None or protocol.NUM_EXAMPLES not in metrics or protocol.CLIENT_ID not in metrics:
        return f"metrics must carry '{protocol.NUM_EXAMPLES}' and '{protocol.CLIENT_ID}'"
    if not protocol.as_number(metrics[protocol.NUM_EXAMPLES]) > 0:
        return f"'{protocol.NUM_EXAMPLES}' must be positive"
    return None


class EncoderStrategy(Strategy):
    def __init__(
        self,
        state: ServerState,
        max_update_norm: float | None = None,
        client_nodes: Mapping[int, int] | None = None,
    ) -> None:
        """``client_nodes``: client (partition) id -> node id. Flower's node ids are random per run;
        sampling by client id keeps the sample, and so the run, reproducible from the seed. Without
        it the node ids stand in for client ids."""
        self.state = state
        self.max_update_norm = max_update_norm
        self.client_nodes = dict(client_nodes) if client_nodes else None

    def summary(self) -> None:
        log.info(
            "EncoderStrategy(aggregator=%r, optimizer=%r)", self.state.updater.aggregator, self.state.updater.optimizer
        )

    def _nodes(self, grid: Grid) -> dict[int, int]:
        return self.client_nodes or {node: node for node in grid.get_node_ids()}

    def _messages(
        self, arrays: ArrayRecord, config: ConfigRecord, clients: Iterable[int], nodes: Mapping[int, int], kind: str
    ) -> list[Message]:
        """One message per client, to its node: ``arrays`` (the global state), or the client's own
        encoder when it has one (``server.personalisation``; clients not trained yet get the global)."""
        shared = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config})
        messages = []
        for client in clients:
            own = self.state.client_state(client)
            content = (
                shared if own is None else RecordDict({protocol.ARRAYS: ArrayRecord(own), protocol.CONFIG: config})
            )
            messages.append(Message(content=content, message_type=kind, dst_node_id=nodes[client]))
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._nodes(grid)
        config[protocol.SERVER_ROUND] = server_round
        return self._messages(arrays, config, self.state.sampler.train(nodes), nodes, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._nodes(grid)
        config[protocol.SERVER_ROUND] = server_round
        return self._messages(
            arrays, config, self.state.sampler.evaluate(nodes, server_round), nodes, MessageType.EVALUATE
        )

    def aggregate(self, server_round: int, replies: Iterable[Message]) -> TrainRound:
        """Screen every reply, aggregate the accepted ones (stepping the server state); the round's report."""
        report = TrainRound()
        accepted: list[tuple[int, Message, dict, dict]] = []  # (client id, reply, encoder state, head state)
        updater, head_averager = self.state.updater, self.state.head_averager
        expected = updater.layout.expected_shapes
        optional = head_averager.expected_shapes if head_averager else None
        for message in replies:
            report.replies += 1
            if message.has_error():
                report.failures += 1
                log.warning(
                    "round %d: client reply failed: %s",
                    server_round,
                    (message.error.reason or "?").splitlines()[0][:200],
                )
                continue
            reason = screen_envelope(message) or self._identity_violation(message, accepted)
            if reason is None:
                state = message.content.array_records[protocol.ARRAYS].to_torch_state_dict()
                encoder, heads = split_heads(state)
                reason = protocol.check_update(state, expected, optional) or self._norm_violation(
                    encoder, _client_id(message)
                )
            if reason is not None:
                report.rejected.append((_client_id(message), reason))
                log.warning("round %d: rejected update from client %s: %s", server_round, _client_id(message), reason)
                continue
            accepted.append((_client_id(message), message, encoder, heads))  # type: ignore[arg-type]
        if not accepted:
            return report
        accepted.sort(key=lambda entry: entry[0])  # row order independent of arrival order: reproducible sums
        metrics = [message.content.metric_records[protocol.METRICS] for _, message, _, _ in accepted]
        report.accepted = [client for client, *_ in accepted]
        if head_averager is not None:
            examples = [
                {t: v["num_examples"] for t, v in protocol.unflatten_task_metrics(m, protocol.TRAIN).items()}
                for m in metrics
            ]
            head_averager.step([heads for *_, heads in accepted], examples)
        report.diagnostics = updater.step(
            client_ids=report.accepted,
            client_states=[encoder for _, _, encoder, _ in accepted],
            num_examples=[protocol.as_number(m[protocol.NUM_EXAMPLES]) for m in metrics],
            losses=[protocol.as_number(m[protocol.TRAIN_LOSS]) for m in metrics]
            if all(protocol.TRAIN_LOSS in m for m in metrics)
            else None,
        )
        return report

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook: :meth:`aggregate`, as (new global arrays, summary metrics)."""
        report = self.aggregate(server_round, replies)
        if report.diagnostics is None:
            return None, None
        summary = {
            "conflict-fraction": report.diagnostics.conflict_fraction,
            "aggregate-norm": report.diagnostics.aggregate_norm,
        }
        return ArrayRecord(self.state.global_state()), MetricRecord({**summary, "num-accepted": len(report.accepted)})

    def _identity_violation(self, message: Message, accepted: list[tuple[int, Message, dict, dict]]) -> str | None:
        """A reply must speak for its own node (when the node of every client is known) and only once a
        round: rows and personal encoders are keyed by client id, so a borrowed id would act for another."""
        client = _client_id(message)
        if any(client == other for other, *_ in accepted):
            return f"client id {client} already replied this round"
        node = None if self.client_nodes is None else self.client_nodes.get(client)  # type: ignore[arg-type]
        if self.client_nodes is not None and node != message.metadata.src_node_id:
            return f"client id {client} does not belong to node {message.metadata.src_node_id}"
        return None

    def _norm_violation(self, encoder: dict, client_id: int | None) -> str | None:
        """The update is measured against what the client received (its own encoder, if it has one)."""
        if self.max_update_norm is None:
            return None
        updater = self.state.updater
        offset = None if client_id is None else updater.client_offset(client_id)
        received = updater.param.detach() if offset is None else updater.param.detach() + offset
        norm = float((updater.layout.flatten(encoder) - received).norm())
        return (
            f"update norm {norm:.4g} exceeds server.max_update_norm {self.max_update_norm:g}"
            if norm > self.max_update_norm
            else None
        )

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
