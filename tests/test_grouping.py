"""Grouping rules (``fedmtl/methods/grouping/``) on constructed updates with known clusters: clustered
FL's split rule (Sattler et al., TNNLS 2020), affinity grouping with its automatic number of groups,
the given groups, and the clustering helpers against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fedmtl.core.errors import FieldError
from fedmtl.methods.grouping import AffinityGrouping, ClusteredFL, GivenGroups, GroupRound
from fedmtl.methods.grouping.affinity import best_cut, task_similarity
from fedmtl.methods.grouping.cfl import split_evidence
from fedmtl.methods.grouping.clustering import (
    adjusted_rand_index,
    complete_linkage,
    cosines_from_gramian,
    silhouette,
)
from tests.group_rounds import round_of


def clustered_rows(sizes, directions, noise=0.1, seed=0) -> torch.Tensor:
    """``sizes[c]`` rows near ``directions[c]`` (float64, dimension 16)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for size, direction in zip(sizes, directions):
        for _ in range(size):
            rows.append(
                torch.tensor(direction, dtype=torch.float64)
                + noise * torch.randn(16, generator=generator, dtype=torch.float64)
            )
    return torch.stack(rows)


def axis(i: int, sign: float = 1.0) -> list[float]:
    v = [0.0] * 16
    v[i] = sign
    return v


OPPOSED = clustered_rows([3, 3], [axis(0), axis(0, -1.0)])  # two clusters whose updates cancel


# ----------------------------------------------------------------------------- clustered FL


def test_split_evidence_matches_hand_values():
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]], dtype=torch.float64)
    evidence = split_evidence(rows @ rows.T, ((0, 1), (2, 3)))
    assert evidence.mean_norm == pytest.approx(0.0, abs=1e-12)  # the four rows cancel
    assert evidence.max_norm == pytest.approx(math.sqrt(1.01))
    assert evidence.cross_cosine == pytest.approx(-1 / math.sqrt(1.01))  # rows 1 and 2: the closest pair across


def test_cfl_splits_opposed_clusters_when_their_mean_update_vanishes():
    regrouper = ClusteredFL(warmup_rounds=2).start()
    assert regrouper.observe(3, round_of(OPPOSED, clients=range(10, 16))) == [(10, 11, 12), (13, 14, 15)]


def test_cfl_does_not_split_during_warmup_or_when_the_mean_update_is_large():
    rule = ClusteredFL(warmup_rounds=2)
    assert rule.start().observe(2, round_of(OPPOSED)) is None  # still warming up
    aligned = clustered_rows([6], [axis(0)], noise=0.3)  # one direction: the mean update is as large as each
    assert rule.start().observe(10, round_of(aligned)) is None


def test_cfl_ratio_is_scale_free():
    """The same updates times 1e-4 or 1e4 are split the same way (the reference's absolute eps are not)."""
    for scale in (1e-4, 1.0, 1e4):
        assert ClusteredFL(warmup_rounds=0).start().observe(1, round_of(OPPOSED * scale)) == [(0, 1, 2), (3, 4, 5)]


def test_cfl_needs_separated_sides():
    """Orthogonal clusters cancel less and their cross cosine is about 0: a bound of -0.5 refuses the
    split that the default bound 0 accepts (with a loose mean ratio)."""
    orthogonal = clustered_rows([3, 3], [axis(0), axis(1)], noise=0.05)
    assert (
        ClusteredFL(warmup_rounds=0, max_mean_ratio=0.9, max_cross_cosine=0.2).start().observe(1, round_of(orthogonal))
    )
    assert (
        ClusteredFL(warmup_rounds=0, max_mean_ratio=0.9, max_cross_cosine=-0.5).start().observe(1, round_of(orthogonal))
        is None
    )


def test_cfl_keeps_groups_it_cannot_aggregate_or_compare_whole():
    rule = ClusteredFL(warmup_rounds=0)
    assert rule.start().observe(1, round_of(OPPOSED, min_size=4)) is None  # a side of 3 is too small
    assert rule.start().observe(1, round_of(OPPOSED[:2])) is None  # two clients: nothing to split
    missing = round_of(OPPOSED, clients=range(6), members=range(7))  # client 6 sent nothing this round
    assert rule.start().observe(1, missing) is None
    assert ClusteredFL(warmup_rounds=0, max_groups=2).start().observe(1, round_of(OPPOSED, groups=2)) is None


def test_cfl_recurses_on_a_group_that_still_conflicts():
    """Clusters A (1, 0.5), B (1, -0.5) and C (-2, 0) cancel: C splits off first (its cosine to A and B is
    about -0.9; A and B's is 0.6). Trained together, A and B reach their joint stationary point, where
    their updates (0, 0.5) and (0, -0.5) cancel: that group splits again."""
    plane = [[1.0, 0.5], [1.0, -0.5], [-2.0, 0.0]]
    rows = clustered_rows([3, 3, 3], [v + [0.0] * 14 for v in plane], noise=0.05)
    rule = ClusteredFL(warmup_rounds=0)
    assert rule.start().observe(1, round_of(rows)) == [(0, 1, 2, 3, 4, 5), (6, 7, 8)]
    later = clustered_rows([3, 3], [axis(1, 0.5), axis(1, -0.5)], noise=0.05, seed=1)
    again = rule.start().observe(2, round_of(later, clients=range(6), members=range(6), groups=2))
    assert again == [(0, 1, 2), (3, 4, 5)]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_mean_ratio": 0.0}, "max_mean_ratio"),
        ({"max_mean_ratio": 1.0}, "max_mean_ratio"),
        ({"max_cross_cosine": 1.5}, "max_cross_cosine"),
        ({"warmup_rounds": -1}, "warmup_rounds"),
        ({"max_groups": 0}, "max_groups"),
    ],
)
def test_cfl_thresholds_out_of_range_are_refused(kwargs, key):
    with pytest.raises(FieldError) as caught:
        ClusteredFL(**kwargs)
    assert caught.value.key == key


def test_cfl_checks_participation_and_group_count():
    assert ClusteredFL().check([0, 1, 2], 0.5) == (
        "name",
        "cfl compares every client of a group in one round: needs server.fraction_fit: 1.0",
    )
    assert ClusteredFL(max_groups=4).check([0, 1, 2], 1.0) == ("max_groups", "is 4 but there are 3 clients")
    assert ClusteredFL(max_groups=3).check([0, 1, 2], 1.0) is None


# ----------------------------------------------------------------------------- affinity grouping


@pytest.mark.parametrize(("clusters", "expected"), [(2, 2), (3, 3)])
def test_affinity_finds_the_number_of_clusters(clusters, expected):
    directions = [axis(0), axis(0, -1), axis(1)][:clusters]
    regrouper = AffinityGrouping(signal="cosines", warmup_rounds=3).start()
    groups = None
    for server_round in (1, 2, 3):
        rows = clustered_rows([3] * clusters, directions, noise=0.1, seed=server_round)
        groups = regrouper.observe(server_round, round_of(rows))
        if server_round < 3:
            assert groups is None  # still averaging
    assert groups == [tuple(range(3 * c, 3 * c + 3)) for c in range(expected)]


def test_affinity_keeps_one_group_when_clients_agree():
    regrouper = AffinityGrouping(signal="cosines", warmup_rounds=2).start()
    for server_round in (1, 2):
        assert (
            regrouper.observe(server_round, round_of(clustered_rows([8], [axis(0)], noise=0.3, seed=server_round)))
            is None
        )


def test_affinity_groups_form_once():
    regrouper = AffinityGrouping(signal="cosines", warmup_rounds=1).start()
    assert regrouper.observe(1, round_of(OPPOSED)) is not None
    assert regrouper.observe(2, round_of(OPPOSED)) is None  # after warm-up nothing changes


def test_affinity_averages_only_the_pairs_it_saw():
    """Client 2 is aggregated only in round 1, with a cosine of -1 to client 0; rounds 1 and 2 give
    clients 0 and 1 the cosines 1 and 0: their similarity is 0.5, client 2's to client 0 is -1."""
    regrouper = AffinityGrouping(signal="cosines", warmup_rounds=2).start()
    a, b = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    regrouper.observe(1, round_of(torch.stack([a, a, -a]), members=(0, 1, 2)))
    regrouper.observe(2, round_of(torch.stack([a, b]), clients=(0, 1), members=(0, 1, 2)))
    state = regrouper.state_dict()["pairs"]
    means = {tuple(k): s / c for k, s, c in state}
    assert means == {(0, 1): pytest.approx(0.5), (0, 2): pytest.approx(-1.0), (1, 2): pytest.approx(-1.0)}


@pytest.mark.parametrize("signal", ["updates", "cosines"])
def test_affinity_state_round_trips(signal):
    first = AffinityGrouping(signal=signal, warmup_rounds=2).start()
    first.observe(1, round_of(OPPOSED))
    second = AffinityGrouping(signal=signal, warmup_rounds=2).start()
    second.load_state_dict(first.state_dict())
    rows = clustered_rows([3, 3], [axis(0), axis(0, -1.0)], seed=5)
    assert first.observe(2, round_of(rows)) == second.observe(2, round_of(rows)) == [(0, 1, 2), (3, 4, 5)]


def noisy_rounds(rounds: int, signal: float = 0.3, noise: float = 1.0) -> list[torch.Tensor]:
    """Two clusters of four clients whose per-round updates are mostly noise around opposite directions."""
    return [
        clustered_rows([4, 4], [axis(0, signal), axis(0, -signal)], noise=noise / 4, seed=r)  # noise norm ~ 1
        for r in range(rounds)
    ]


def test_summed_updates_find_clusters_that_single_rounds_hide():
    """Per round the two clusters' cosines are buried in noise (cosine signal about 0.08); summed over
    ten rounds the noise averages down and the clusters separate. The per-round cosines, averaged, do not."""
    summed, averaged = (
        AffinityGrouping(warmup_rounds=10).start(),
        AffinityGrouping(signal="cosines", warmup_rounds=10).start(),
    )
    for server_round, rows in enumerate(noisy_rounds(10), start=1):
        by_sum, by_mean = summed.observe(server_round, round_of(rows)), averaged.observe(server_round, round_of(rows))
    assert by_sum == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert by_mean != by_sum


def test_summed_updates_wait_for_every_client():
    regrouper = AffinityGrouping(warmup_rounds=1).start()
    assert regrouper.wants_updates(1) and not regrouper.wants_updates(2)
    assert regrouper.observe(1, round_of(OPPOSED[:5], members=range(6))) is None  # client 5 never trained


def test_best_cut_scores_the_cut_by_its_silhouette():
    """Two blocks of similarity 1 inside, -1 across: distances 0 inside, 2 across, silhouette exactly 1."""
    similarity = torch.tensor([[1, 1, -1, -1], [1, 1, -1, -1], [-1, -1, 1, 1], [-1, -1, 1, 1]], dtype=torch.float64)
    assert best_cut(similarity, 3, 0.25, 1) == ([(0, 1), (2, 3)], pytest.approx(1.0))
    assert best_cut(similarity, 3, 0.25, 3) == ([(0, 1, 2, 3)], None)  # no cut has groups of 3


def test_task_similarity_normalises_the_mutual_affinity():
    """Z(a->b) = 0.1, Z(b->a) = 0.3, Z(a->a) = 0.4, Z(b->b) = 0.1: the tasks' similarity is
    0.2 / sqrt(0.04) = 1 (clipped), a client holding both tasks averages (1, 1) with b's self-pair."""
    affinity = {("a", "b"): 0.1, ("b", "a"): 0.3, ("a", "a"): 0.4, ("b", "b"): 0.1}
    sim = task_similarity({0: ("a",), 1: ("b",)}, [0, 1], affinity)
    assert sim[0, 1] == pytest.approx(1.0)
    opposed = {("a", "b"): -0.05, ("b", "a"): -0.05, ("a", "a"): 0.4, ("b", "b"): 0.1}
    assert task_similarity({0: ("a",), 1: ("b",)}, [0, 1], opposed)[0, 1] == pytest.approx(-0.05 / 0.2)


def test_affinity_on_task_affinity_separates_opposed_tasks():
    """Clients 0-1 hold task a, 2-3 task b; a step on one task raises the other's loss."""
    affinity = {("a", "b"): -0.2, ("b", "a"): -0.1, ("a", "a"): 0.3, ("b", "b"): 0.2}
    tasks = {0: ("a",), 1: ("a",), 2: ("b",), 3: ("b",)}
    seen = GroupRound(members=(0, 1, 2, 3), clients=(0, 1, 2, 3), gramian=torch.eye(4, dtype=torch.float64),
                      min_size=1, tasks=tasks, task_affinity=affinity)  # fmt: skip
    assert AffinityGrouping(signal="tasks", warmup_rounds=1).start().observe(1, seen) == [(0, 1), (2, 3)]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"warmup_rounds": 0}, "warmup_rounds"),
        ({"max_groups": 1}, "max_groups"),
        ({"min_silhouette": 2.0}, "min_silhouette"),
    ],
)
def test_affinity_settings_out_of_range_are_refused(kwargs, key):
    with pytest.raises(FieldError) as caught:
        AffinityGrouping(**kwargs)
    assert caught.value.key == key


# ----------------------------------------------------------------------------- given groups


def test_given_groups_are_the_initial_groups_and_never_change():
    rule = GivenGroups(groups=((3, 1), (0, 2)))
    assert rule.initial([0, 1, 2, 3]) == [(1, 3), (0, 2)]
    assert rule.start().observe(5, round_of(OPPOSED)) is None


@pytest.mark.parametrize(
    ("groups", "problem"),
    [
        (((0, 1), (2, 7)), ("groups[1]", "names client 7, which does not take part (clients: [0, 1, 2])")),
        (((0, 1), (1, 2)), ("groups[1]", "names client 1, already in groups[0]")),
        (((0, 1),), ("groups", "leaves clients [2] in no group")),
    ],
)
def test_given_groups_that_do_not_partition_the_clients_are_refused(groups, problem):
    assert GivenGroups(groups=groups).check([0, 1, 2], 1.0) == problem


# ----------------------------------------------------------------------------- clustering helpers


def test_cosines_from_a_gramian_with_a_zero_row():
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-3.0, -4.0]], dtype=torch.float64)
    cosines = cosines_from_gramian(rows @ rows.T)
    assert cosines.tolist() == [[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]


def test_complete_linkage_merges_by_the_farthest_pair():
    """Points on a line at 0, 1, 2.5, 10: single linkage and complete linkage agree on {0, 1} first;
    then complete linkage joins 2.5 to {0, 1} (farthest 2.5) before 10 to anything (7.5)."""
    x = torch.tensor([0.0, 1.0, 2.5, 10.0], dtype=torch.float64)
    distance = (x[:, None] - x[None, :]).abs()
    assert complete_linkage(distance, 3) == [(0, 1), (2,), (3,)]
    assert complete_linkage(distance, 2) == [(0, 1, 2), (3,)]
    assert complete_linkage(distance, 1) == [(0, 1, 2, 3)]
    assert complete_linkage(distance, 4) == [(0,), (1,), (2,), (3,)]


def test_silhouette_matches_its_definition():
    """x = 0, 1, 4: clusters {0, 1}, {4}. Item 0: a = 1, b = 4 -> 0.75; item 1: a = 1, b = 3 -> 2/3;
    item 4 alone: 0. Mean (0.75 + 2/3) / 3."""
    x = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    distance = (x[:, None] - x[None, :]).abs()
    assert silhouette(distance, [(0, 1), (2,)]) == pytest.approx((0.75 + 2 / 3) / 3)


@pytest.mark.parametrize(
    ("labels", "truth", "expected"),
    [
        ([0, 0, 1, 1], ["a", "a", "b", "b"], 1.0),
        ([0, 1, 0, 1], [0, 0, 1, 1], -0.5),  # index 0, expected 2 * 2 / 6, max 2: (0 - 2/3) / (2 - 2/3)
        ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),
    ],
)
def test_adjusted_rand_index_hand_values(labels, truth, expected):
    assert adjusted_rand_index(labels, truth) == pytest.approx(expected)


def test_groups_that_still_agree_are_not_split():
    """Blocks of similarity 0.9 inside and 0.5 across have a clear structure (silhouette 0.8) but agree:
    the rule's default bound 0.2 on the closest groups' mean similarity keeps one group; 0.6 splits."""
    block = torch.full((4, 4), 0.5, dtype=torch.float64)
    block[:2, :2] = block[2:, 2:] = 0.9
    block.fill_diagonal_(1.0)
    assert AffinityGrouping().max_cross_similarity == 0.2
    assert best_cut(block, 3, 0.25, 1, max_cross=0.2) == ([(0, 1, 2, 3)], None)
    assert best_cut(block, 3, 0.25, 1, max_cross=0.6)[0] == [(0, 1), (2, 3)]
