"""The client's side of secure aggregation (``privacy.secure_aggregation``; server/engines/secure.py).

Flower's ``secaggplus_mod`` runs the protocol's stages on the ClientApp's train handler; in the stage
that collects the masked vectors it calls the handler with the round's instructions in Flower's legacy
layout (``fitins.*``) and expects the reply in it (``fitres.*``), the update as a list of arrays that it
quantizes and masks before anything leaves the client. This module reads that request and writes that
reply; the handler trains as in any round.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable

from fedmtl.core import protocol
from fedmtl.core.params import is_head, task_of

SECAGG_CONFIGS = "secaggplus_configs"  # the record the SecAgg+ workflow puts its stage settings in
FIT_PARAMETERS, FIT_CONFIG = "fitins.parameters", "fitins.config"


class SecureTrainingFailed(RuntimeError):
    """The handler failed in a secure round: raised so that the failure's reason reaches the server
    (``secaggplus_mod`` cannot pass an error reply on)."""


def secure_train_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+ on the messages of a secure round; every other message goes straight to the handler."""
    if msg.metadata.message_type != MessageType.TRAIN or SECAGG_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)

    def handler(request: Message, handler_context: Context) -> Message:
        reply = call_next(request, handler_context)
        if reply.has_error():
            raise SecureTrainingFailed(reply.error.reason)
        return reply

    return secaggplus_mod(msg, context, handler)


def secure_request(msg: Message) -> tuple[ConfigRecord, dict[str, torch.Tensor]] | None:
    """(the round's config, the encoder received) of a secure round's training request; None otherwise."""
    if FIT_CONFIG not in msg.content.config_records:
        return None
    config = msg.content.config_records[FIT_CONFIG]
    layout = json.loads(str(config[protocol.SECURE_KEYS]))
    arrays = msg.content.array_records[FIT_PARAMETERS].to_numpy_ndarrays()
    shared = {key: torch.from_numpy(np.array(a)).reshape(shape) for (key, shape), a in zip(layout, arrays)}
    return config, shared


def secure_reply(
    msg: Message,
    config: ConfigRecord,
    received: Mapping[str, torch.Tensor],
    sent: Mapping[str, torch.Tensor],
    reports: Sequence[Mapping[str, Any]],
    num_examples: float,
) -> Message:
    """The reply ``secaggplus_mod`` masks: the update ``received - sent`` in the request's key order, the
    weight (example count, or 1 when the round is a plain mean) and the reports, with the count of update
    values the protocol's clipping range will cut. Federated heads (:func:`head_factor`) follow the
    encoder, each scaled by its task's examples, then one weight per head."""
    layout = json.loads(str(config[protocol.SECURE_KEYS]))
    max_weight = float(protocol.as_number(config[protocol.SECURE_MAX_WEIGHT]))
    weight = 1 if max_weight == 1.0 else int(num_examples)
    clipping_range = float(protocol.as_number(config[protocol.SECURE_CLIPPING_RANGE]))
    task_examples = {
        task: float(protocol.as_number(values["num_examples"]))
        for task, values in protocol.unflatten_task_metrics(reports[0], protocol.TRAIN).items()
    }
    ratio = weight / max_weight
    update, head_weights = [], []
    for key, shape in layout:
        moved = received[key].double() - sent[key].double() if key in sent else torch.zeros(shape, dtype=torch.float64)
        if is_head(key):  # another task's head (not sent back) moves nothing and weighs nothing
            factor = head_factor(config, ratio, task_examples.get(task_of(key), 0.0) if key in sent else 0.0)
            moved = moved * factor
            head_weights.append(np.atleast_1d(np.float64(factor)))
        update.append(np.atleast_1d(moved.numpy()))
    update += head_weights
    if not all(np.isfinite(u).all() for u in update):  # masked, it would corrupt every client's sum unseen
        raise ValueError("the update is not finite: not sent to secure aggregation")
    clipped = sum(int((np.abs(u) * ratio > clipping_range).sum()) for u in update)
    first = {**reports[0], protocol.SECURE_CLIPPED: float(clipped)}
    content = RecordDict(
        {
            "fitres.parameters": ArrayRecord(update),  # type: ignore[arg-type]
            "fitres.num_examples": MetricRecord({"num_examples": weight}),
            "fitres.metrics": ConfigRecord(protocol.encode_reports([first, *reports[1:]])),  # type: ignore[arg-type]
            "fitres.status": ConfigRecord({"code": 0, "message": "ok"}),
        }
    )
    return Message(content, reply_to=msg)


def head_factor(config: ConfigRecord, weight_ratio: float, task_examples: float) -> float:
    """What a head's update and its weight are multiplied by so that, after SecAgg+ scales everything by the
    client's weight ratio, each carries ``task_examples / the largest example count``: the ratio of the
    two means is then the example-weighted average of the head (``server.federate_heads``)."""
    return task_examples / (float(protocol.as_number(config[protocol.SECURE_HEAD_SCALE])) * weight_ratio)
