"""Who trains in a round: the sampler draws from a cohort's members in client order, the same members
as drawing from the sorted list itself (so seeded runs keep their samples), looking only at the
members it draws."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from fedmtl.config.experiment import sample_size
from fedmtl.data.participants import Participant
from fedmtl.federation.sampling import Sampler, client_order, in_client_order, sample


def participants(client_ids: Sequence[int]) -> list[Participant]:
    return [Participant(index=i, clients=(c,), tasks=("t",)) for i, c in enumerate(client_ids)]


@pytest.mark.parametrize(("n", "fraction", "seed"), [(10, 0.3, 0), (57, 0.1, 1), (200, 0.5, 2), (5, 0.01, 3)])
def test_a_sample_is_the_one_drawn_from_the_sorted_members(n: int, fraction: float, seed: int) -> None:
    shuffled = participants(random.Random(seed).sample(range(1000), n))  # client ids not in node order
    members = in_client_order(shuffled)
    assert [p.client_id for p in members] == sorted(p.client_id for p in shuffled)
    drawn = sample(members, fraction, random.Random(seed))
    reference_rng = random.Random(seed)  # the rule as first written: draw members, then sort them
    reference = sorted(reference_rng.sample(list(members), sample_size(n, fraction)), key=client_order)
    assert drawn == reference and len(drawn) == max(1, round(fraction * n))


def test_everyone_when_the_fraction_covers_them_and_the_generator_is_left_alone() -> None:
    members = in_client_order(participants([4, 2, 9]))
    rng = random.Random(0)
    state = rng.getstate()
    assert sample(members, 1.0, rng) == list(members) and rng.getstate() == state


class CountingMembers(Sequence[Participant]):
    """A million members that count which ones are looked at."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        self.read += 1
        return Participant(index=i, clients=(i,), tasks=("t",))


def test_a_round_reads_only_the_members_it_samples() -> None:
    members = CountingMembers(1_000_000)
    sampler = Sampler(seed=0, fraction_train=1e-5, fraction_evaluate=2e-5)
    trained = sampler.train(members)
    evaluated = sampler.evaluate(members, server_round=3)
    assert (len(trained), len(evaluated)) == (10, 20) and members.read == 30
    assert [p.client_id for p in trained] == sorted(p.client_id for p in trained)
