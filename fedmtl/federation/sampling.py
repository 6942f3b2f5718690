"""Who trains and who is evaluated in a round: seeded samples of a cohort's participants."""

from __future__ import annotations

import random
from collections.abc import Sequence

from fedmtl.config.experiment import sample_size
from fedmtl.data.participants import Participant


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


def sample(members: Sequence[Participant], fraction: float, rng: random.Random) -> list[Participant]:
    ordered = sorted(members, key=client_order)
    count = sample_size(len(ordered), fraction)
    if count >= len(ordered):
        return ordered
    return sorted(rng.sample(ordered, count), key=client_order)
