"""How the server counts one round's replies (``TrainResult.count``) and goes on past the bad ones: a
failure keeps the first line of its reason (at most 200 characters), a failure without a reason is
'?', and neither a failed nor a rejected reply stops the replies after it from being aggregated."""

from __future__ import annotations

import torch

from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.messages import Reply
from fedmtl.federation.algorithm import ServerAlgorithm, TrainResult
from tests.helpers import TINY_OVERRIDES


def report(participant: int) -> dict[str, float]:
    return {protocol.PARTICIPANT: participant, protocol.CLIENT_ID: participant, protocol.NUM_EXAMPLES: 4.0}


def test_a_failure_keeps_the_first_line_of_its_reason_cut_at_200_characters() -> None:
    result = TrainResult()
    assert result.count(Reply(participant=0, error="x" * 250 + "\nTraceback ...")) is False
    assert result.count(Reply(participant=1, error="")) is False  # failed, without a word why
    assert result.count(Reply(participant=2, reports=[{"a": 1.0}])) is True
    assert result.failed == ["x" * 200, "?"]
    assert (result.replies, result.failures, result.reports) == (3, 2, [{"a": 1.0}])


def test_failed_and_rejected_replies_do_not_stop_the_ones_after_them() -> None:
    algorithm = ServerAlgorithm(load_config(None, [*TINY_OVERRIDES, "server.aggregator={name: fedavg}"]))
    sends = algorithm.train_sends(1, {})
    start = algorithm.cohorts[0].global_state()

    moved = {k: v + 1.0 for k, v in start.items()}
    replies = [
        Reply(participant=0, error="the client crashed"),
        Reply(
            participant=1, arrays={k: torch.full_like(v, float("nan")) for k, v in start.items()}, reports=[report(1)]
        ),
        Reply(participant=2, arrays=moved, reports=[report(2)]),
    ]
    result = algorithm.aggregate(sends, replies)
    assert result.failed == ["the client crashed"] and [c for c, _ in result.rejected] == [1]
    assert result.accepted == [2]
    assert all(torch.equal(algorithm.cohorts[0].global_state()[k], moved[k]) for k in moved)


def test_probes_for_client_affinity_follow_a_round_with_two_updates_and_not_one() -> None:
    """``server.client_affinity_every``: next round each client scores the others' encoders, so a cohort
    whose round accepted one update has nothing to send for probing."""
    algorithm = ServerAlgorithm(load_config(None, [*TINY_OVERRIDES, "server.client_affinity_every=1"]))
    start = algorithm.cohorts[0].global_state()

    def round_with(participants: list[int], server_round: int) -> None:
        sends = algorithm.train_sends(server_round, {})
        replies = [
            Reply(p, arrays={k: v + 0.1 * (p + 1) for k, v in start.items()}, reports=[report(p)]) for p in participants
        ]
        algorithm.aggregate(sends, replies)

    round_with([0], 1)
    assert all(set(s.arrays) == set(start) for s in algorithm.train_sends(2, {}))
    round_with([0, 2], 2)
    assert all(set(s.arrays) > set(start) for s in algorithm.train_sends(3, {}))


def test_a_round_that_sent_nothing_aggregates_nothing() -> None:
    algorithm = ServerAlgorithm(load_config(None, list(TINY_OVERRIDES)))
    result = algorithm.aggregate([], [])
    assert (result.replies, result.accepted, [c.accepted for c in result.cohorts]) == (0, [], [0])


def test_a_group_split_off_finds_the_probes_of_its_nearest_ancestor() -> None:
    algorithm = ServerAlgorithm(load_config(None, list(TINY_OVERRIDES)))
    mine, parents, other = ({}, {}), ({}, {1: {}}), ({}, {2: {}})
    algorithm._probes = {"g": parents, "g.0": mine, "h": other}
    assert algorithm._probes_for("g.0.1") is mine and algorithm._probes_for("g.0") is mine
    assert algorithm._probes_for("g.1") is parents and algorithm._probes_for("g") is parents
    assert algorithm._probes_for("k.0") is None and algorithm._probes_for("gg") is None
