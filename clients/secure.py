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
    values the protocol's clipping range will cut."""
    keys = [key for key, _ in json.loads(str(config[protocol.SECURE_KEYS]))]
    max_weight = float(protocol.as_number(config[protocol.SECURE_MAX_WEIGHT]))
    weight = 1 if max_weight == 1.0 else int(num_examples)
    clipping_range = float(protocol.as_number(config[protocol.SECURE_CLIPPING_RANGE]))
    update = [np.atleast_1d((received[k].double() - sent[k].double()).numpy()) for k in keys]
    clipped = sum(int((np.abs(u) * (weight / max_weight) > clipping_range).sum()) for u in update)
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
