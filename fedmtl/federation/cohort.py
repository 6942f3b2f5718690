"""A cohort: participants that share one encoder (``server.cohorts``), with its sampler and updater."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from fedmtl.core import protocol
from fedmtl.data.participants import Participant
from fedmtl.federation.sampling import Sampler, in_client_order
from fedmtl.federation.screening import Accepted
from fedmtl.federation.server_update import RoundDiagnostics, ServerUpdater
from fedmtl.methods.aggregation.gramian_stream import GramianStream


@dataclass
class Cohort:
    """``adopts``: the cohort's one member keeps its own encoder (local training): the member's trained
    encoder becomes the cohort's exactly, with no aggregator and no server optimizer."""

    key: str
    members: Sequence[Participant]  # in client order (a table for a million members)
    sampler: Sampler
    updater: ServerUpdater
    adopts: bool = False
    # the encoder as last sent, and the version of the flat parameter it was read at (moves with every step)
    _global: tuple[int, dict[str, torch.Tensor]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.members = in_client_order(self.members)  # once: the sampler draws by position every round

    def global_state(self) -> dict[str, torch.Tensor]:
        """The cohort's encoder (one dict for every message of a round: engines serialise it once)."""
        version = self.updater.param._version
        if self._global is None or self._global[0] != version:
            self._global = (version, self.updater.global_state())
        return self._global[1]

    def state_for(self, participant: int) -> dict[str, torch.Tensor]:
        """What a member receives: the cohort's encoder, or its own (``server.personalisation``)."""
        if self.updater.client_offset(participant) is None:
            return self.global_state()
        return self.updater.client_state(participant)

    def received(self, participant: int) -> torch.Tensor:
        """The flat encoder ``participant`` received this round."""
        offset = self.updater.client_offset(participant)
        current = self.updater.param.detach()
        return current if offset is None else current + offset

    def step(
        self, accepted: Sequence[Accepted], streamed: tuple[GramianStream, Sequence[int]] | None = None
    ) -> RoundDiagnostics | None:
        """Aggregate the members' accepted updates (rows in client order) and move the encoder; ``streamed``:
        their rows already written into a stream, at these slots (:mod:`fedmtl.federation.round_rows`)."""
        if self.adopts:
            (only,) = accepted
            with torch.no_grad():
                self.updater.param.copy_(self.updater.layout.flatten(only.encoder))
            return None
        reports = [a.report for a in accepted]
        has_losses = all(protocol.TRAIN_LOSS in r for r in reports)
        diagnostics = self.updater.step(
            client_ids=[a.participant for a in accepted],  # keys of the personal encoders
            client_states=[a.encoder for a in accepted],
            num_examples=[protocol.as_number(r[protocol.NUM_EXAMPLES]) for r in reports],
            losses=[protocol.as_number(r[protocol.TRAIN_LOSS]) for r in reports] if has_losses else None,
            streamed=streamed,
        )
        return replace(diagnostics, clients=tuple(a.client_id for a in accepted))

    def state_dict(self) -> dict:
        return {"updater": self.updater.state_dict(), "sampler": self.sampler.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.updater.load_state_dict(state["updater"])
        self.sampler.rng.setstate(state["sampler"])


class OnlyCohort(Mapping[int, Cohort]):
    """participant index -> its cohort when there is one cohort of every participant: the answer for
    each of ``participants`` indices without a dict entry per participant (a million: the server algorithm
    took 152 MB with the dict, 86 MB without)."""

    def __init__(self, cohort: Cohort, participants: int) -> None:
        self.cohort, self.participants = cohort, participants

    def __getitem__(self, participant: int) -> Cohort:
        if not 0 <= participant < self.participants:
            raise KeyError(participant)
        return self.cohort

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.participants))

    def __len__(self) -> int:
        return self.participants
