"""Secure aggregation of a training round with Flower's SecAgg+ (Bell et al., CCS 2020).

The server drives Flower's ``SecAggPlusWorkflow`` (four message exchanges: setup, key sharing, masked
vectors, unmasking) through the engine's exchange, over whatever grid it holds, and learns only the weighted mean of the
sampled clients' encoder updates; each client's update leaves it masked (``secaggplus_mod`` on the
ClientApp's train handler, :func:`clients.secure.secure_train_mod`). The workflow is Flower's legacy
API, so it is handed a one-shot stand-in for a strategy that returns this round's instructions and keeps
the results.

What the server still sees: which clients took part, their example counts (SecAgg+ sends them in the
clear) and their training metrics. Values are quantized to ``quantization_range`` levels over
``[-clipping_range, clipping_range]`` (error at most ``2 * clipping_range / quantization_range`` per
coordinate and client) and anything outside that range is cut to it: clients count such values and the
server row reports the count. Flower's masks are seeded from 32-bit values: a simulation of the
protocol's flow and cost, not a hardened implementation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from fedmtl.config.sections import SecureAggregationConfig
from fedmtl.core import protocol
from fedmtl.core.logs import quieted
from fedmtl.core.messages import Reply, SecureMean, Send
from fedmtl.core.params import is_head
from server.engines.replies import RequestedNodes


@dataclass(frozen=True)
class _Node:
    """What the workflow needs of a legacy client proxy: its node id."""

    node_id: int


@dataclass
class _OneRound:
    """The strategy calls ``SecAggPlusWorkflow`` makes: this round's instructions out, the results kept."""

    instructions: list[tuple[_Node, FitIns]]
    results: list[tuple[_Node, FitRes]] | None = None
    failures: list[Any] = field(default_factory=list)

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[_Node, FitIns]]:
        return self.instructions

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        self.results, self.failures = results, failures
        return (results[0][1].parameters if results else None), {}


class _Carrier:
    """The engine's grid as the workflow sees it: ``send_and_receive`` through the engine's own exchange
    (fast pulls from a SuperLink), counting the bytes each way."""

    def __init__(self, exchange: Callable[[list[Message], float | None], list[Message]]) -> None:
        self._exchange = exchange
        self.bytes_down = 0
        self.bytes_up: dict[int, int] = {}  # node -> bytes it sent
        self.errors: dict[int, str] = {}  # node -> why it failed, the first time it did

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self.bytes_down += sum(message_bytes(m) for m in messages)
        replies = self._exchange(messages, timeout)
        requested = RequestedNodes(messages)
        for reply in replies:
            node = requested.node_of(reply)
            self.bytes_up[node] = self.bytes_up.get(node, 0) + message_bytes(reply)
            if reply.has_error():
                self.errors.setdefault(node, reply.error.reason or f"error code {reply.error.code}")
        return replies


def message_bytes(message: Message) -> int:
    """Bytes of arrays and of byte strings in a message (SecAgg+'s masked vectors and key shares travel as bytes)."""
    if message.has_error():
        return 0
    content = message.content
    arrays = sum(len(a.data) for record in content.array_records.values() for a in record.values())
    raw = 0
    for record in content.config_records.values():
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            raw += sum(len(v) for v in items if isinstance(v, bytes))
    return arrays + raw


def secure_fit_config(
    send: Send, keys: Sequence[str], max_weight: float, head_scale: float | None, settings: SecureAggregationConfig
) -> dict[str, Any]:
    """The round's config as a client's secure train handler reads it."""
    config = {
        **send.config,
        protocol.SECURE_KEYS: json.dumps([[k, list(send.arrays[k].shape)] for k in keys]),
        protocol.SECURE_MAX_WEIGHT: float(max_weight),
        protocol.SECURE_CLIPPING_RANGE: float(settings.clipping_range),
    }
    if head_scale is not None:
        config[protocol.SECURE_HEAD_SCALE] = float(head_scale)
    return config


@dataclass(frozen=True)
class SecureRound:
    mean: SecureMean | None
    replies: list[Reply]  # reports only, one per participant (failures included)
    bytes_down: int


def secure_round(
    exchange: Callable[[list[Message], float | None], list[Message]],
    sends: Sequence[Send],
    node_of: Mapping[int, int],
    settings: SecureAggregationConfig,
    max_weight: float,
    head_scale: float | None,
    timeout_s: float,
) -> SecureRound:
    """One training round under SecAgg+: the weighted mean of the sampled participants' encoder updates
    (``received - trained``) and one report-only reply per participant (failures included). With federated
    heads (``head_scale``: the largest example count), each head's example-weighted update and its weight
    follow, the weights under ``protocol.SECURE_WEIGHT_PREFIX``."""
    arrays = sends[0].arrays
    keys = sorted(arrays)
    participant_of = {node_of[s.participant]: s.participant for s in sends}
    parameters = ndarrays_to_parameters([_wire(arrays[k]) for k in keys])  # the same for all: serialised once
    instructions = [
        (
            _Node(node_of[s.participant]),
            FitIns(parameters, secure_fit_config(s, keys, max_weight, head_scale, settings)),
        )
        for s in sends
    ]
    strategy = _OneRound(instructions)
    legacy = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=strategy)  # type: ignore[arg-type]
    server_round = int(protocol.as_number(sends[0].config[protocol.SERVER_ROUND]))
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, True)
    workflow = SecAggPlusWorkflow(
        num_shares=float(settings.num_shares),
        reconstruction_threshold=float(settings.reconstruction_threshold),
        max_weight=max_weight,
        clipping_range=settings.clipping_range,
        quantization_range=settings.quantization_range,
        modulus_range=settings.modulus_range,
        timeout=timeout_s,
    )
    carrier = _Carrier(exchange)
    started = time.perf_counter()
    with quieted("flwr", logging.WARNING):  # the workflow logs every stage at INFO
        workflow(carrier, legacy)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    results = strategy.results or []
    replies = [
        Reply(
            participant_of.get(node.node_id),
            reports=protocol.decode_reports(res.metrics),
            payload_bytes=carrier.bytes_up.get(node.node_id, 0),
        )
        for node, res in results
    ]
    answered = {node.node_id for node, _ in results}
    halted = "" if results else "; secure aggregation halted: too few clients left"
    replies += [
        Reply(p, error=carrier.errors.get(node, "dropped out of secure aggregation") + halted)
        for node, p in participant_of.items()
        if node not in answered
    ]
    if not results:
        return SecureRound(None, replies, carrier.bytes_down)
    flat = parameters_to_ndarrays(results[0][1].parameters)  # every result carries the aggregate
    names = [*keys, *(protocol.SECURE_WEIGHT_PREFIX + k for k in keys if is_head(k))]
    shapes = {**{k: arrays[k].shape for k in keys}, **{n: torch.Size([1]) for n in names[len(keys) :]}}
    mean = {n: torch.from_numpy(np.asarray(v, dtype=np.float64)).reshape(shapes[n]) for n, v in zip(names, flat)}
    clipped = sum(int(protocol.as_number(r.reports[0].get(protocol.SECURE_CLIPPED, 0))) for r in replies if r.reports)
    info = {"contributors": len(results), "clipped_values": clipped, "seconds": round(seconds, 4)}
    return SecureRound(SecureMean(mean, info), replies, carrier.bytes_down)


def _wire(tensor: torch.Tensor) -> np.ndarray:
    """Flower 1.41's unmasking skips 0-d arrays (secaggplus_workflow.py): every array goes as at least 1-d."""
    return np.atleast_1d(tensor.detach().cpu().numpy())
