"""Who trains and who is evaluated in a round: seeded samples of a cohort's participants."""

from __future__ import annotations

import random
from collections.abc import Sequence

from fedmtl.config.experiment import sample_size
from fedmtl.data.participants import Participant, ParticipantTable


class Sampler:
    """``round(fraction * n)`` of a cohort's participants (at least one), in client-id order.

    Training samples come from one generator whose state is checkpointed; evaluation samples from a
    fresh generator per round (they need no checkpointed state). Participants are drawn in the order
    of their client ids, so that a sample depends on the seed and the clients, never on node ids.
    """

    def __init__(self, seed: int | str, fraction_train: float, fraction_evaluate: float) -> None:
        self.seed = seed
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.rng = random.Random(seed)

    @property
    def samples(self) -> bool:
        """Whether a round may leave some participants out."""
        return self.fraction_train < 1 or self.fraction_evaluate < 1

    def train(self, members: Sequence[Participant]) -> list[Participant]:
        return sample(members, self.fraction_train, self.rng)

    def evaluate(self, members: Sequence[Participant], server_round: int) -> list[Participant]:
        return sample(members, self.fraction_evaluate, random.Random(f"{self.seed}/evaluate/{server_round}"))


def client_order(participant: Participant) -> tuple[int, int]:
    return participant.client_id, participant.index


def in_client_order(participants: Sequence[Participant]) -> Sequence[Participant]:
    """What :func:`sample` expects (a cohort sorts its members once, not every round); a table sorts its
    columns, and is returned as it is when already in order (the default federation's)."""
    if isinstance(participants, ParticipantTable):
        return participants.in_client_order()
    return tuple(sorted(participants, key=client_order))


def sample(members: Sequence[Participant], fraction: float, rng: random.Random) -> list[Participant]:
    """``members`` in client order (:func:`in_client_order`); the sample keeps that order. Drawing
    positions draws the same members as drawing from the sequence (``random.sample`` picks by
    position), in time and memory that grow with the sample, not with the members."""
    count = sample_size(len(members), fraction)
    if count >= len(members):
        return list(members)
    return [members[i] for i in sorted(rng.sample(range(len(members)), count))]
