"""Affinity grouping (``fedmtl/methods/grouping/affinity.py``) and the cohort rules
(``fedmtl/methods/cohorts.py``) at their edges, against values worked out by hand in each test: the
settings' bounds with their key and message, the group-count check, which rounds the state reads and
which rules ask for the update rows, the task-affinity signal, the limits a split obeys (max_groups, the
smallest group, the cross similarity, in float64), the summed updates in the checkpoint and dropped once
the groups form, the one cohort's name and the per-task cohorts' refusal of a participant training
several tasks. Complements tests/test_grouping_rules.py."""

from __future__ import annotations

import pytest
import torch

from fedmtl.core.errors import FieldError
from fedmtl.data.participants import Participant
from fedmtl.methods.cohorts import OneCohort, PerTask
from fedmtl.methods.grouping import AffinityGrouping, ClusteredFL, GivenGroups, GroupRound, NoGrouping
from tests.group_rounds import round_of


def rows_of(*values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# two pairs of clients with opposite updates: similarity 1 inside a pair, -1 across, silhouette 1
OPPOSED_PAIRS = rows_of([1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0])


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "key", "message"),
    [
        ({"warmup_rounds": 0}, "warmup_rounds", "must be >= 1, got 0"),
        ({"max_groups": 1}, "max_groups", "must be >= 2, got 1"),
        ({"min_silhouette": 1.5}, "min_silhouette", "must be in [-1, 1], got 1.5"),
        ({"min_silhouette": -1.5}, "min_silhouette", "must be in [-1, 1], got -1.5"),
        ({"max_cross_similarity": 1.5}, "max_cross_similarity", "must be in [-1, 1], got 1.5"),
        ({"max_cross_similarity": -1.5}, "max_cross_similarity", "must be in [-1, 1], got -1.5"),
    ],
)
def test_affinity_settings_out_of_range_are_refused_with_their_key_and_bound(kwargs, key, message):
    with pytest.raises(FieldError) as caught:
        AffinityGrouping(**kwargs)
    assert (caught.value.key, caught.value.message) == (key, message)


def test_affinity_accepts_the_bounds_of_its_settings():
    assert AffinityGrouping(warmup_rounds=1).warmup_rounds == 1
    assert AffinityGrouping(max_groups=2).max_groups == 2
    assert AffinityGrouping(max_groups=None).max_groups is None
    assert AffinityGrouping(min_silhouette=1.0).min_silhouette == 1.0
    assert AffinityGrouping(min_silhouette=-1.0).min_silhouette == -1.0
    assert AffinityGrouping(max_cross_similarity=1.0).max_cross_similarity == 1.0
    assert AffinityGrouping(max_cross_similarity=-1.0).max_cross_similarity == -1.0


def test_affinity_check_allows_as_many_groups_as_clients_and_refuses_more():
    rule = AffinityGrouping(max_groups=3)
    assert rule.check([0, 1, 2], 1.0) is None
    assert rule.check([4, 7], 1.0) == ("max_groups", "is 3 but there are 2 clients")
    assert AffinityGrouping().check([0, 1], 1.0) is None  # no limit: nothing to check


# ----------------------------------------------------------------------------- which rounds are read


def test_affinity_leaves_a_federation_already_split_alone():
    """The same opposed pairs that split the federation in one group are ignored once it has two groups."""
    assert AffinityGrouping(warmup_rounds=1).start().observe(1, round_of(OPPOSED_PAIRS)) == [(0, 1), (2, 3)]
    assert AffinityGrouping(warmup_rounds=1).start().observe(1, round_of(OPPOSED_PAIRS, groups=2)) is None


def test_affinity_on_summed_updates_refuses_a_round_without_its_rows():
    round_ = GroupRound(members=(0, 1), clients=(0, 1), gramian=torch.eye(2, dtype=torch.float64), min_size=1)
    with pytest.raises(ValueError) as caught:
        AffinityGrouping(warmup_rounds=1).start().observe(1, round_)
    assert str(caught.value) == "affinity grouping on summed updates needs the round's update rows"


def test_affinity_on_task_affinity_reads_the_task_affinity_not_the_client_affinity():
    """Clients 0 to 3 hold tasks a, b, c, d; Z(t->t) = 0.1 for each, Z(a<->b) = Z(c<->d) = 0.1 (normalised
    1), -0.05 between the pairs (normalised -0.05 / 0.1 = -0.5): distances 0 inside a pair and 1.5 across,
    silhouette 1. The round's client affinity, had it been read instead, holds no pair: every similarity 0
    (distinct tasks never measured), silhouette 0, no split."""
    tasks = {0: ("a",), 1: ("b",), 2: ("c",), 3: ("d",)}
    affinity = {(t, t): 0.1 for t in "abcd"}
    affinity |= {pair: 0.1 for pair in [("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")]}
    affinity |= {(s, t): -0.05 for s in "ab" for t in "cd"} | {(t, s): -0.05 for s in "ab" for t in "cd"}
    round_ = GroupRound(
        members=(0, 1, 2, 3),
        clients=(0, 1, 2, 3),
        gramian=torch.zeros(4, 4, dtype=torch.float64),
        min_size=1,
        tasks=tasks,
        task_affinity=affinity,
    )
    assert AffinityGrouping(signal="tasks", warmup_rounds=1).start().observe(1, round_) == [(0, 1), (2, 3)]


# ----------------------------------------------------------------------------- the split's limits


def test_affinity_cuts_into_at_most_max_groups():
    """Twins 0, 1 along x, twins 2, 3 along (1, 7, 0) (cosine 1 / sqrt(50) = 0.14 with x), twins 4, 5 along z
    (cosine 0 with both). Three groups score 1 (every item a = 0, b > 0); with max_groups 2 complete
    linkage joins the two closest pairs, {0, 1, 2, 3} against {4, 5}."""
    x, y, z = [1.0, 0.0, 0.0], [1.0, 7.0, 0.0], [0.0, 0.0, 1.0]
    rows = rows_of(x, x, y, y, z, z)
    assert AffinityGrouping(warmup_rounds=1).start().observe(1, round_of(rows)) == [(0, 1), (2, 3), (4, 5)]
    capped = AffinityGrouping(warmup_rounds=1, max_groups=2).start()
    assert capped.observe(1, round_of(rows)) == [(0, 1, 2, 3), (4, 5)]


def test_affinity_refuses_a_cut_with_a_group_smaller_than_the_server_can_aggregate():
    """The opposed pairs split in groups of two; a server that needs three clients per group keeps them whole."""
    assert AffinityGrouping(warmup_rounds=1).start().observe(1, round_of(OPPOSED_PAIRS, min_size=2)) == [
        (0, 1),
        (2, 3),
    ]
    assert AffinityGrouping(warmup_rounds=1).start().observe(1, round_of(OPPOSED_PAIRS, min_size=3)) is None


def test_affinity_refuses_a_cut_whose_groups_still_agree():
    """Pairs along (1, 0) and (1, 1): cosine 1 / sqrt(2) = 0.707 across, above the default bound 0.2 (their
    silhouette, 1, would pass); allowed with a bound of 0.75."""
    rows = rows_of([1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0])
    assert AffinityGrouping(warmup_rounds=1).start().observe(1, round_of(rows)) is None
    loose = AffinityGrouping(warmup_rounds=1, max_cross_similarity=0.75).start()
    assert loose.observe(1, round_of(rows)) == [(0, 1), (2, 3)]


def test_affinity_on_cosines_accepts_a_cut_whose_cross_similarity_equals_max_cross_in_float64():
    """Rows (5, 0), (5, 0), (3, 4): cosine 15 / 25 = 0.6 (the float64 nearest 0.6) of client 2 with the
    others. With max_cross_similarity 0.6 the cut {0, 1}, {2} is allowed (0.6 is not above 0.6; silhouette
    (1 + 1 + 0) / 3). Held in float32 the similarity would read 0.6000000238 and refuse it."""
    rows = rows_of([5.0, 0.0], [5.0, 0.0], [3.0, 4.0])
    assert float(torch.tensor(0.6, dtype=torch.float32)) > 0.6
    rule = AffinityGrouping(signal="cosines", warmup_rounds=1, max_cross_similarity=0.6)
    assert rule.start().observe(1, round_of(rows)) == [(0, 1), (2,)]


# ----------------------------------------------------------------------------- state


def test_only_affinity_on_summed_updates_asks_for_the_update_rows_and_only_in_the_warm_up():
    """The rows cost the server a copy of every update: rules that read the Gramian never ask for them."""
    for rule in (NoGrouping(), GivenGroups(groups=((0, 1),)), ClusteredFL(), AffinityGrouping(signal="cosines")):
        assert not rule.start().wants_updates(1)
    summed = AffinityGrouping(warmup_rounds=2).start()
    assert [summed.wants_updates(r) for r in (1, 2, 3)] == [True, True, False]


def test_affinity_checkpoint_holds_the_summed_updates_of_the_warm_up():
    """After round 1 of 2 the state holds each client's update (no pairs: the updates signal keeps none)."""
    regrouper = AffinityGrouping(warmup_rounds=2).start()
    assert regrouper.observe(1, round_of(OPPOSED_PAIRS)) is None
    state = regrouper.state_dict()
    assert state["pairs"] == [] and sorted(state["updates"]) == [0, 1, 2, 3]
    for client in range(4):
        torch.testing.assert_close(state["updates"][client], OPPOSED_PAIRS[client], rtol=0, atol=0)


def test_affinity_drops_the_summed_updates_once_the_groups_form():
    regrouper = AffinityGrouping(warmup_rounds=1).start()
    assert regrouper.observe(1, round_of(OPPOSED_PAIRS)) == [(0, 1), (2, 3)]
    assert regrouper.state_dict() == {"pairs": [], "updates": {}}
    assert regrouper.observe(2, round_of(OPPOSED_PAIRS)) is None  # after the warm-up nothing more is read


# ----------------------------------------------------------------------------- per-task cohorts


def test_one_cohort_puts_every_participant_in_the_cohort_named_all():
    participants = [Participant(0, (0,), ("a",)), Participant(3, (1,), ("a", "b"))]
    assert OneCohort().split(participants) == {"all": participants}


def test_per_task_cohorts_accept_participants_training_one_task_each():
    participants = [Participant(0, (0,), ("a",)), Participant(1, (0,), ("b",))]
    assert PerTask().check(participants) is None
    assert PerTask().split(participants) == {"a": (participants[0],), "b": (participants[1],)}


def test_per_task_cohorts_name_the_first_participant_training_several_tasks():
    participants = [Participant(0, (0,), ("a",)), Participant(1, (1,), ("a", "b")), Participant(2, (2,), ("b", "c"))]
    assert PerTask().check(participants) == (
        "needs participants that train one task each (clients.participants: client_tasks); "
        "participant 1 trains ['a', 'b']"
    )


def test_affinity_drops_the_summed_updates_when_a_member_never_trained_in_the_warm_up():
    regrouper = AffinityGrouping(warmup_rounds=1).start()
    three_of_four = GroupRound(
        members=(0, 1, 2, 3), clients=(0, 1, 2), gramian=OPPOSED_PAIRS[:3] @ OPPOSED_PAIRS[:3].T, min_size=1,
        groups=1, updates=OPPOSED_PAIRS[:3],
    )  # fmt: skip
    assert regrouper.observe(1, three_of_four) is None  # nothing to compare client 3 by: no groups
    assert regrouper.state_dict() == {"pairs": [], "updates": {}}  # and no N x P sums kept for the run
