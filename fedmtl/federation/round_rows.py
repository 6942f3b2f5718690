"""A training round's update rows, written while the replies arrive (issue #25: aggregation off the
critical path).

The server is idle while it waits for its clients. :class:`RoundRows` gives every cohort that takes its
rows as they are (:attr:`~fedmtl.federation.server_update.ServerUpdater.streams`) a
:class:`~fedmtl.methods.aggregation.gramian_stream.GramianStream` with one slot per participant sent
to, in the order the rows are aggregated in (client id, then participant). An engine hands each reply
to :meth:`RoundRows.take` as it comes: its row ``global - local`` is written into its slot and the
stream computes the products of each tile of slots once the tile is complete. When the round ends, the
server screens the replies as before; :meth:`RoundRows.rows_for` then gives the accepted ones' slots,
writing any row not taken yet (an engine that hands replies over only at the end). Rows are taken
speculatively: a reply the screening rejects leaves its slot out. The Gramian is the same whichever
order the replies came in, and whether they came early or late (the stream's tiles).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from fedmtl.core.messages import Reply, Send
from fedmtl.federation.cohort import Cohort
from fedmtl.federation.screening import Accepted, claimed_participant
from fedmtl.methods.aggregation.gramian_stream import GramianStream


class RoundRows:
    """The streams of one training round; ``cohort_of``: participant -> its cohort; ``client_of``:
    participant -> client id."""

    def __init__(self, sends: Sequence[Send], cohort_of: Mapping[int, Cohort], client_of: Callable[[int], int]) -> None:
        sent: dict[str, list[int]] = {}
        cohorts: dict[str, Cohort] = {}
        for send in sends:
            cohort = cohort_of[send.participant]
            if not cohort.adopts and cohort.updater.streams:
                sent.setdefault(cohort.key, []).append(send.participant)
                cohorts[cohort.key] = cohort
        self.slot_of: dict[int, tuple[str, int]] = {}  # participant -> (cohort key, slot)
        self.streams: dict[str, tuple[Cohort, GramianStream, torch.Tensor]] = {}  # key -> cohort, stream, encoder
        for key, participants in sent.items():
            cohort = cohorts[key]
            ordered = sorted(set(participants), key=lambda p: (client_of(p), p))
            self.slot_of.update({p: (key, slot) for slot, p in enumerate(ordered)})
            current = cohort.updater.param.detach().to(cohort.updater.device)
            self.streams[key] = (cohort, cohort.updater.stream(len(ordered)), current)

    def take(self, reply: Reply) -> None:
        """Write ``reply``'s row into its slot now, when it is a training reply whose encoder has the
        expected shapes (everything else is the screening's to judge, later)."""
        if reply.error is not None or reply.problem is not None or reply.arrays is None:
            return
        participant = reply.participant if reply.participant is not None else claimed_participant(reply)
        place = self.slot_of.get(participant) if participant is not None else None
        if place is None:
            return
        cohort, stream, current = self.streams[place[0]]
        if stream.source(place[1]) is not None:
            return  # a second reply for the slot: the screening decides which counts (rows_for)
        arrays, expected = reply.arrays, cohort.updater.layout.expected_shapes
        if all(key in arrays and arrays[key].shape == shape for key, shape in expected.items()):
            _write(cohort, stream, place[1], arrays, current, reply)

    def rows_for(
        self, cohort: Cohort, accepted: Sequence[Accepted], origin: Mapping[int, Reply]
    ) -> tuple[GramianStream, list[int]] | None:
        """The stream and the accepted rows' slots (in ``accepted``'s order) of ``cohort``, rows not taken yet
        written now; None when the cohort takes no stream or a slot holds another reply's row than the one
        accepted (``origin``: ``id(accepted update)`` -> its reply), and the rows are then made at once."""
        entry = self.streams.get(cohort.key)
        if entry is None:
            return None
        _, stream, current = entry
        slots = []
        for update in accepted:
            place = self.slot_of.get(update.participant)
            if place is None or place[0] != cohort.key:
                return None  # not sent this round as the cohort's (a node speaking for another participant)
            source = stream.source(place[1])
            if source is None:
                _write(cohort, stream, place[1], update.encoder, current, origin[id(update)])
            elif source is not origin[id(update)]:
                return None
            slots.append(place[1])
        return stream, slots


def _write(
    cohort: Cohort, stream: GramianStream, slot: int, state: Mapping[str, torch.Tensor], current: torch.Tensor,
    reply: Reply,
) -> None:  # fmt: skip
    """Slot ``slot`` gets ``current - flatten(state)``, filled from ``reply``."""
    cohort.updater.write_row(stream.row(slot), state, current)
    stream.settle(slot, source=reply)
