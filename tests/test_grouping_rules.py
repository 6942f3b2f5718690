"""Grouping rules (``fedmtl/methods/grouping/``) at their edges, against values worked out by hand in each
test: the boundaries of best_cut's silhouette, cross-similarity and group-count tests, the normalised
affinity's defaults and clipping, task and client similarity matrices (clients holding several tasks),
the affinity state's unseen pairs and restored summed updates, clustered FL's boundaries and settings,
and the clustering helpers on small or degenerate inputs. Complements tests/test_grouping.py."""

from __future__ import annotations

import math

import pytest
import torch

from fedmtl.core.errors import FieldError
from fedmtl.methods.grouping import AffinityGrouping, ClusteredFL, GivenGroups
from fedmtl.methods.grouping.affinity import best_cut, client_similarity, normalised_affinity, task_similarity
from fedmtl.methods.grouping.cfl import split_evidence
from fedmtl.methods.grouping.clustering import complete_linkage, cosines_from_gramian
from tests.group_rounds import round_of


def rows_of(*values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def blocks(inside: float, across: float) -> torch.Tensor:
    """Similarity of two blocks {0, 1} and {2, 3}: ``inside`` within a block, ``across`` between them."""
    similarity = torch.full((4, 4), across, dtype=torch.float64)
    similarity[:2, :2] = similarity[2:, 2:] = inside
    return similarity.fill_diagonal_(1.0)


# ----------------------------------------------------------------------------- best_cut


def test_best_cut_accepts_a_cut_whose_silhouette_equals_min_silhouette():
    """Blocks of similarity 1 inside and -1 across: distances 0 inside and 2 across, silhouette exactly 1."""
    assert best_cut(blocks(1.0, -1.0), 2, 1.0, 1) == ([(0, 1), (2, 3)], 1.0)


def test_best_cut_accepts_a_cut_whose_cross_similarity_equals_max_cross():
    """Blocks of similarity 1 inside and 0 across: the closest groups agree exactly 0 (allowed at 0)."""
    assert best_cut(blocks(1.0, 0.0), 2, 0.25, 1, max_cross=0.0) == ([(0, 1), (2, 3)], 1.0)


def test_best_cut_tries_n_minus_one_groups():
    """Distances d01 = 0, d02 = d12 = 1.25, d03 = d13 = 2, d23 = 1.5 (similarity 1 - d). Complete linkage
    merges {0, 1}, then 2 into it (1.25 < 1.5). Two groups {0, 1, 2}, {3}: items 0 and 1 have a = 0.625,
    b = 2 (0.6875 each), item 2 a = 1.25, b = 1.5 (1/6), item 3 alone 0: mean 0.38541...
    Three groups {0, 1}, {2}, {3}: items 0 and 1 score 1, the singletons 0: mean 0.5, the best; its
    closest groups ({0, 1} and {2}) agree -0.25."""
    distance = torch.tensor(
        [[0, 0, 1.25, 2], [0, 0, 1.25, 2], [1.25, 1.25, 0, 1.5], [2, 2, 1.5, 0]], dtype=torch.float64
    )
    two_groups = (0.6875 * 2 + (1.5 - 1.25) / 1.5) / 4
    assert two_groups < 0.5
    assert best_cut(1 - distance, 3, 0.25, 1, max_cross=0.2) == ([(0, 1), (2,), (3,)], 0.5)
    assert best_cut(1 - distance, 2, 0.25, 1, max_cross=0.2) == ([(0, 1, 2), (3,)], pytest.approx(two_groups))


def test_best_cut_keeps_the_fewest_groups_among_equal_silhouettes():
    """Four clients with similarity 0 to each other: every distance is 1, so every item of every cut has
    a = b = 1 and silhouette 0; the first cut tried (two groups) wins the tie."""
    cut, score = best_cut(torch.eye(4, dtype=torch.float64), 3, 0.0, 1)
    assert len(cut) == 2 and sorted(i for group in cut for i in group) == [0, 1, 2, 3]
    assert score == 0.0


# ----------------------------------------------------------------------------- normalised affinity


def test_normalised_affinity_of_a_task_with_itself_is_one():
    assert normalised_affinity({("a", "a"): 0.4}, "a", "a") == 1.0
    assert normalised_affinity({}, "a", "a") == 1.0


@pytest.mark.parametrize(
    ("affinity", "expected"),
    [
        ({("b", "a"): 0.2, ("a", "a"): 0.4, ("b", "b"): 0.1}, 0.5),  # Z(a->b) missing: 0, (0 + 0.2) / 2 / 0.2
        ({("a", "b"): 0.2, ("a", "a"): 0.4, ("b", "b"): 0.1}, 0.5),  # Z(b->a) missing
        ({("a", "b"): 0.1, ("b", "a"): 0.1, ("b", "b"): 0.1}, 0.0),  # Z(a->a) missing: no progress on a
        ({("a", "b"): 0.1, ("b", "a"): 0.1, ("a", "a"): 0.1}, 0.0),  # Z(b->b) missing
    ],
)
def test_normalised_affinity_reads_a_missing_measurement_as_zero(affinity, expected):
    assert normalised_affinity(affinity, "a", "b") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("mutual", "expected"), [(0.5, 1.0), (-0.5, -1.0)])
def test_normalised_affinity_is_clipped_to_plus_minus_one(mutual, expected):
    """Mutual affinity +-0.5 over sqrt(0.1 * 0.1) = 0.1 is +-5, clipped to +-1."""
    affinity = {("a", "b"): mutual, ("b", "a"): mutual, ("a", "a"): 0.1, ("b", "b"): 0.1}
    assert normalised_affinity(affinity, "a", "b") == expected


# ----------------------------------------------------------------------------- task and client similarity

SELF_A, SELF_B = 0.3, 0.1
CROSS = {("a", "b"): -0.1, ("b", "a"): -0.2, ("a", "a"): SELF_A, ("b", "b"): SELF_B}
S_AB = (-0.1 - 0.2) / 2 / math.sqrt(SELF_A * SELF_B)  # the tasks' normalised affinity, -0.866...


def test_task_similarity_of_a_client_holding_two_tasks_averages_its_task_pairs():
    """Client 0 holds a and b, client 1 holds a: their similarity is the mean of s(a, a) = 1 and s(b, a);
    a client is similar 1 to itself even when its own tasks disagree."""
    similarity = task_similarity({0: ("a", "b"), 1: ("a",)}, [0, 1], CROSS)
    assert similarity.dtype == torch.float64
    assert similarity[0, 0] == similarity[1, 1] == 1.0
    assert similarity[0, 1] == similarity[1, 0] == pytest.approx((1 + S_AB) / 2, rel=1e-12)


def test_task_similarity_uses_each_clients_tasks_in_the_order_given():
    """Clients 7, 3, 5 hold b, (a, b), a; listed as [7, 3, 5] the matrix follows that order."""
    tasks = {3: ("a", "b"), 5: ("a",), 7: ("b",)}
    similarity = task_similarity(tasks, [7, 3, 5], CROSS)
    expected = torch.tensor(
        [[1.0, (S_AB + 1) / 2, S_AB], [(S_AB + 1) / 2, 1.0, (1 + S_AB) / 2], [S_AB, (1 + S_AB) / 2, 1.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(similarity, expected, rtol=1e-12, atol=0)


def test_client_similarity_is_the_normalised_client_affinity_in_float64():
    affinity = {(3, 5): -0.1, (5, 3): -0.2, (3, 3): SELF_A, (5, 5): SELF_B, (9, 9): 0.5}
    similarity = client_similarity([5, 3, 9], affinity)
    assert similarity.dtype == torch.float64
    expected = torch.tensor([[1.0, S_AB, 0.0], [S_AB, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(similarity, expected, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- affinity state


def test_affinity_on_cosines_gives_a_member_never_aggregated_similarity_zero():
    """Clients 0, 1 and 2, 3 send opposite updates; member 4 sends none in the warm-up, so its similarity to
    every other member is 0 (distance 1). Three groups {0, 1}, {2, 3}, {4} score 0.8 (four items at 1, the
    singleton 0), two groups at best 0.7 (4 joins a pair: 0.75, 0.75, 0, 1, 1), four break a pair."""
    a = [1.0, 0.0]
    rows = rows_of(a, a, [-1.0, 0.0], [-1.0, 0.0])
    regrouper = AffinityGrouping(signal="cosines", warmup_rounds=1).start()
    assert regrouper.observe(1, round_of(rows, members=range(5))) == [(0, 1), (2, 3), (4,)]


def test_restored_summed_updates_count_for_a_client_absent_after_the_restore():
    """Client 5 trains only in round 1; a regrouper restored after round 1 still has its summed update
    and splits after round 2 exactly as the uninterrupted one (without it, client 5 could not be compared)."""
    first_round = rows_of([1.0, 0.1], [1.0, -0.1], [1.0, 0.0], [-1.0, 0.1], [-1.0, -0.1], [-1.0, 0.0])
    second_round = first_round[:5]
    first = AffinityGrouping(warmup_rounds=2).start()
    first.observe(1, round_of(first_round))
    second = AffinityGrouping(warmup_rounds=2).start()
    second.load_state_dict(first.state_dict())
    expected = [(0, 1, 2), (3, 4, 5)]
    assert second.observe(2, round_of(second_round, members=range(6))) == expected
    assert first.observe(2, round_of(second_round, members=range(6))) == expected


def test_affinity_state_without_summed_updates_restores_its_pairs():
    """A checkpoint written before the summed-update signal holds only the pairs."""
    regrouper = AffinityGrouping(signal="cosines", warmup_rounds=2).start()
    regrouper.load_state_dict({"pairs": [[[0, 1], 0.5, 1]]})
    assert regrouper.state_dict() == {"pairs": [[[0, 1], 0.5, 1]], "updates": {}}


# ----------------------------------------------------------------------------- given groups


def test_given_groups_must_name_a_group():
    with pytest.raises(FieldError) as caught:
        GivenGroups(groups=())
    assert (caught.value.key, caught.value.message) == ("groups", "must name at least one group of client ids")


def test_given_groups_refuse_an_empty_group_by_its_index():
    with pytest.raises(FieldError) as caught:
        GivenGroups(groups=((0, 1), ()))
    assert (caught.value.key, caught.value.message) == ("groups[1]", "is empty")


# ----------------------------------------------------------------------------- clustered FL


@pytest.mark.parametrize(
    ("kwargs", "key", "message"),
    [
        ({"warmup_rounds": -1}, "warmup_rounds", "must be >= 0, got -1"),
        ({"max_cross_cosine": -1.5}, "max_cross_cosine", "must be in [-1, 1], got -1.5"),
        ({"max_cross_cosine": 1.5}, "max_cross_cosine", "must be in [-1, 1], got 1.5"),
        ({"max_groups": 0}, "max_groups", "must be >= 1, got 0"),
    ],
)
def test_cfl_settings_out_of_range_are_refused_with_their_key_and_bound(kwargs, key, message):
    with pytest.raises(FieldError) as caught:
        ClusteredFL(**kwargs)
    assert (caught.value.key, caught.value.message) == (key, message)


def test_cfl_accepts_the_bounds_of_its_settings():
    assert ClusteredFL(max_cross_cosine=-1.0).max_cross_cosine == -1.0
    assert ClusteredFL(max_cross_cosine=1.0).max_cross_cosine == 1.0
    assert ClusteredFL(max_groups=1).max_groups == 1
    assert ClusteredFL(warmup_rounds=0).warmup_rounds == 0


def test_cfl_never_splits_two_clients_even_when_opposed():
    rows = rows_of([1.0, 0.0], [-1.0, 0.0])
    assert ClusteredFL(warmup_rounds=0).start().observe(1, round_of(rows)) is None


def test_cfl_splits_three_clients():
    """Updates 1, 1 and -2 along one axis: the mean vanishes, the sides {0, 1}, {2} have cosine -1."""
    rows = rows_of([1.0, 0.0], [1.0, 0.0], [-2.0, 0.0])
    assert ClusteredFL(warmup_rounds=0).start().observe(1, round_of(rows)) == [(0, 1), (2,)]


def test_cfl_splits_when_the_mean_update_equals_the_ratio_times_the_largest():
    """Updates 2, 2, -1, -1 along one axis: |mean| = 2 / 4 = 0.5 = 0.25 x the largest norm 2."""
    rows = rows_of([2.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-1.0, 0.0])
    evidence = split_evidence(rows @ rows.T, ((0, 1), (2, 3)))
    assert (evidence.mean_norm, evidence.max_norm) == (0.5, 2.0)
    assert ClusteredFL(warmup_rounds=0, max_mean_ratio=0.25).start().observe(1, round_of(rows)) == [(0, 1), (2, 3)]


def test_cfl_splits_when_the_cross_cosine_equals_its_bound():
    """Orthogonal pairs: cross cosine exactly 0, the default bound; |mean| = sqrt(8) / 4 < 0.9 x 1."""
    rows = rows_of([1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0])
    rule = ClusteredFL(warmup_rounds=0, max_mean_ratio=0.9)
    assert rule.max_cross_cosine == 0.0
    assert rule.start().observe(1, round_of(rows)) == [(0, 1), (2, 3)]


def test_split_evidence_of_updates_shorter_than_one():
    """Rows (0.3, 0.4), (0, 0.2), (-0.3, -0.4): norms 0.5, 0.2, 0.5; the mean is (0, 0.2) / 3."""
    rows = rows_of([0.3, 0.4], [0.0, 0.2], [-0.3, -0.4])
    evidence = split_evidence(rows @ rows.T, ((0, 1), (2,)))
    assert evidence.max_norm == pytest.approx(0.5, rel=1e-12)
    assert evidence.mean_norm == pytest.approx(0.2 / 3, rel=1e-12)
    assert evidence.cross_cosine == pytest.approx(-0.8, rel=1e-12)  # row 1 against row 2: -0.08 / (0.2 x 0.5)


# ----------------------------------------------------------------------------- clustering helpers


def test_cosines_of_updates_shorter_than_one():
    """Rows (0.3, 0.4), (0.6, 0.8), (0, -0.1): parallel (cosine 1) and at cosine -0.8 and -0.8."""
    rows = rows_of([0.3, 0.4], [0.6, 0.8], [0.0, -0.1])
    expected = rows_of([1.0, 1.0, -0.8], [1.0, 1.0, -0.8], [-0.8, -0.8, 1.0])
    torch.testing.assert_close(cosines_from_gramian(rows @ rows.T), expected, rtol=1e-12, atol=1e-15)


def test_a_row_whose_squared_norm_underflows_has_cosine_zero():
    """(1e-170, 0) squares to 1e-340, below the smallest float64: its Gramian diagonal is 0 while its
    product with (1, 0) is 1e-170. It counts as a zero row, not as a cosine of 1e130."""
    rows = rows_of([1e-170, 0.0], [1.0, 0.0])
    gram = rows @ rows.T
    assert gram[0, 0] == 0.0 and gram[0, 1] > 0
    assert cosines_from_gramian(gram).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_complete_linkage_reads_the_matrix_as_distances_not_as_coordinates():
    """Points 0, 2, 3, 7, 13 on a line: complete linkage merges {2, 3} (1), then 0 into it (3), then
    {7, 13} (6, below 7 from 7 to {0, 2, 3}). Clustering the matrix's rows as coordinates would not."""
    x = torch.tensor([0.0, 2.0, 3.0, 7.0, 13.0], dtype=torch.float64)
    distance = (x[:, None] - x[None, :]).abs()
    assert complete_linkage(distance, 2) == [(0, 1, 2), (3, 4)]


def test_complete_linkage_refuses_more_groups_than_items():
    with pytest.raises(ValueError, match=r"^cannot cut 3 items into 4 groups$"):
        complete_linkage(torch.zeros(3, 3, dtype=torch.float64), 4)


def test_the_adjusted_rand_index_of_labelings_of_different_lengths_says_both_lengths():
    from fedmtl.methods.grouping.clustering import adjusted_rand_index

    with pytest.raises(ValueError, match="3 labels against 2 true labels"):
        adjusted_rand_index([0, 0, 1], [0, 1])
