"""The server's gate before aggregation: every training reply is screened, one reason per rejection.

A reply must speak for the participant the engine asked and only once a round (rows and personal
encoders are keyed by participant, so a borrowed id would act for another), carry the metrics the
server needs and a positive example count, the parameters it was sent with their shapes and finite
values (:func:`fedmtl.core.protocol.check_update`), and, with ``server.max_update_norm``, an update
no larger than the bound, measured against what the participant received.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedmtl.core import protocol
from fedmtl.core.messages import Reply
from fedmtl.core.params import split_heads


@dataclass(frozen=True)
class Accepted:
    participant: int
    client_id: int
    encoder: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]
    report: dict[str, Any]


def claimed_participant(reply: Reply) -> int | None:
    report = reply.reports[0] if reply.reports else {}
    value = report.get(protocol.PARTICIPANT)
    return None if value is None else int(protocol.as_number(value))


def screen(
    reply: Reply,
    seen: Collection[int],
    expected: Mapping[str, torch.Size],
    optional: Mapping[str, torch.Size] | None,
    norm_of: Callable[[int, dict[str, torch.Tensor]], float] | None = None,
    max_norm: float | None = None,
) -> Accepted | str:
    """The accepted update, or why it is rejected. ``seen``: participants accepted this round;
    ``norm_of(participant, encoder)``: the update's norm against what the participant received."""
    if reply.problem is not None:
        return reply.problem
    participant = claimed_participant(reply)
    if participant is None or len(reply.reports) != 1:
        return f"a training reply needs one metrics record with '{protocol.PARTICIPANT}'"
    if reply.participant is not None and participant != reply.participant:
        return f"participant {participant} does not belong to the node asked for participant {reply.participant}"
    if participant in seen:
        return f"participant {participant} already replied this round"
    report = reply.reports[0]
    if protocol.NUM_EXAMPLES not in report or protocol.CLIENT_ID not in report:
        return f"metrics must carry '{protocol.NUM_EXAMPLES}' and '{protocol.CLIENT_ID}'"
    if not protocol.as_number(report[protocol.NUM_EXAMPLES]) > 0:
        return f"'{protocol.NUM_EXAMPLES}' must be positive"
    if reply.arrays is None:
        return "a training reply needs the updated parameters"
    reason = protocol.check_update(reply.arrays, expected, optional)
    if reason is not None:
        return reason
    encoder, heads = split_heads(reply.arrays)
    if max_norm is not None and norm_of is not None:
        norm = norm_of(participant, encoder)
        if norm > max_norm:
            return f"update norm {norm:.4g} exceeds server.max_update_norm {max_norm:g}"
    client_id = int(protocol.as_number(report[protocol.CLIENT_ID]))
    return Accepted(participant, client_id, encoder, heads, report)
