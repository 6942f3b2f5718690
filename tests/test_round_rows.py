"""The server's rows taken as replies arrive (``ServerAlgorithm.on_reply``, ``RoundRows``): engines hand
each reply over as it comes (or, for a grid that cannot, at the end); the round's
result is the same bit for bit whatever order the replies came in and whether the engine handed them
over early or only at the end; a reply taken early and then rejected is left out; rows that the server
changes before aggregating keep the one-shot path."""

from __future__ import annotations

import random

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.messages import TRAIN, Reply, Send
from fedmtl.federation.algorithm import ServerAlgorithm
from fedmtl.federation.screening import screen
from fedmtl.methods.aggregation.gramian_stream import TILE_ROWS
from server.engines.grid import GridEngine
from server.engines.inprocess import InProcessGrid
from tests.helpers import TINY_OVERRIDES

CLIENTS = 2 * TILE_ROWS + 3  # several tiles, the last one short
SETTINGS = (*TINY_OVERRIDES, f"clients.count={CLIENTS}", "server.fraction_fit=1.0", "server.aggregator={name: mgda}")


def replies_for(algorithm: ServerAlgorithm, seed: int = 0) -> list[Reply]:
    """Each participant's encoder moved by its own random step."""
    start = algorithm.cohorts[0].global_state()
    generator = torch.Generator().manual_seed(seed)
    found = []
    for p in algorithm.participants:
        arrays = {k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in start.items()}
        report = {protocol.PARTICIPANT: p.index, protocol.CLIENT_ID: p.client_id, protocol.NUM_EXAMPLES: 4.0 + p.index}
        found.append(Reply(participant=p.index, arrays=arrays, reports=[report]))
    return found


def one_round(order: list[int] | None, settings=SETTINGS, broken: dict[int, Reply] | None = None):
    """One training round; ``order``: the replies handed to ``on_reply`` (None: none before the end)."""
    algorithm = ServerAlgorithm(load_config(None, list(settings)))
    sends = algorithm.train_sends(1, {})
    replies = replies_for(algorithm)
    for index, reply in (broken or {}).items():
        replies[index] = reply
    for index in order or ():
        algorithm.on_reply(replies[index])
    result = algorithm.aggregate(sends, replies)
    return algorithm, result


def test_the_round_is_the_same_bit_for_bit_whatever_order_the_replies_arrive_in():
    encoders, weights = [], []
    orders = [None, list(range(CLIENTS)), *(random.Random(s).sample(range(CLIENTS), CLIENTS) for s in range(3))]
    orders.append(random.Random(9).sample(range(CLIENTS), CLIENTS // 2))  # half early, the rest at the end
    for order in orders:
        algorithm, result = one_round(order)
        encoders.append(algorithm.cohorts[0].global_state())
        weights.append(result.cohorts[0].diagnostics.weights)
    for encoder, w in zip(encoders[1:], weights[1:]):
        assert w == weights[0]
        assert all(torch.equal(encoder[k], encoders[0][k]) for k in encoder)


def test_rows_are_written_and_tiles_computed_as_replies_arrive():
    algorithm = ServerAlgorithm(load_config(None, list(SETTINGS)))
    algorithm.train_sends(1, {})
    replies = replies_for(algorithm)
    ((_, stream, _),) = algorithm._rows.streams.values()
    for reply in replies[:TILE_ROWS]:
        algorithm.on_reply(reply)
    assert stream.tile_done[0] and not any(stream.tile_done[1:])
    current = algorithm.cohorts[0].updater.param.detach()
    layout = algorithm.cohorts[0].updater.layout
    assert torch.equal(stream.rows[3], current - layout.flatten(replies[3].arrays))


def test_a_reply_taken_early_and_then_rejected_is_left_out():
    algorithm = ServerAlgorithm(load_config(None, list(SETTINGS)))
    start = algorithm.cohorts[0].global_state()
    bad = Reply(  # shapes fit, so its row is taken; the screening rejects its NaN
        participant=2,
        arrays={k: torch.full_like(v, float("nan")) for k, v in start.items()},
        reports=[{protocol.PARTICIPANT: 2, protocol.CLIENT_ID: 2, protocol.NUM_EXAMPLES: 4.0}],
    )
    streamed, result = one_round(list(range(CLIENTS)), broken={2: bad})
    at_end, _ = one_round(None, broken={2: bad})
    assert result.accepted == [c for c in range(CLIENTS) if c != 2]
    ours, theirs = streamed.cohorts[0].global_state(), at_end.cohorts[0].global_state()
    assert all(torch.isfinite(v).all() and torch.equal(v, theirs[k]) for k, v in ours.items())


def test_a_slot_holding_another_replys_row_falls_back_to_the_one_shot_rows():
    algorithm = ServerAlgorithm(load_config(None, list(SETTINGS)))
    sends = algorithm.train_sends(1, {})
    replies = replies_for(algorithm)
    impostor = Reply(participant=1, arrays=replies[0].arrays, reports=[{**replies[1].reports[0]}])
    algorithm.on_reply(impostor)  # taken into participant 1's slot; the genuine reply comes at the end
    (cohort,) = algorithm.cohorts
    origin = {}
    accepted = []
    for reply in replies:
        outcome = screen(reply, set(), cohort.updater.layout.expected_shapes, None)
        accepted.append(outcome)
        origin[id(outcome)] = reply
    assert algorithm._rows.rows_for(cohort, accepted, origin) is None
    result = algorithm.aggregate(sends, replies)  # the one-shot rows: participant 1's own update
    reference, _ = one_round(None)
    assert result.accepted == list(range(CLIENTS))
    ours, theirs = cohort.global_state(), reference.cohorts[0].global_state()
    assert all(torch.allclose(v, theirs[k], atol=1e-6) for k, v in ours.items())


@pytest.mark.parametrize(
    "setting",
    [
        ("server.personalisation={name: mixed}",),
        ("server.aggregator={name: fedavg, weighted: false}", "privacy={clip_norm: 1.0, noise_multiplier: 1.0}"),
    ],
    ids=["personalisation", "central_privacy"],
)
def test_rows_the_server_changes_before_aggregating_are_not_streamed(setting):
    algorithm = ServerAlgorithm(load_config(None, [*SETTINGS, *setting]))
    algorithm.train_sends(1, {})
    assert algorithm._rows is not None and algorithm._rows.streams == {}


class HandsOverAtTheEnd(InProcessGrid):
    """A grid that gives its replies only when all are in (as Flower's simulation does)."""

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        on_message, self.on_message = self.on_message, None
        try:
            return super().send_and_receive(messages, timeout=timeout)
        finally:
            self.on_message = on_message


@pytest.mark.parametrize(("grid", "seen"), [(InProcessGrid, [0, 1, 2]), (HandsOverAtTheEnd, [0, 0, 0])])
def test_an_engine_hands_each_reply_to_on_reply_as_it_comes_or_at_the_latest_at_the_end(flower_identity, grid, seen):
    handed: list[Reply] = []
    when_handled: list[int] = []  # how many replies on_reply had when each client began
    app = ClientApp()

    @app.train()
    def reply(msg: Message, context: Context) -> Message:
        when_handled.append(len(handed))
        return Message(RecordDict(), reply_to=msg)

    engine = GridEngine(grid(app, 3))
    engine.connect(3, interchangeable=True)
    sends = [Send(p, TRAIN, {}, {protocol.SERVER_ROUND: 1}) for p in range(3)]
    exchange = engine.exchange(sends, 10, on_reply=handed.append)
    assert when_handled == seen
    assert len(handed) == 3 and all(a is b for a, b in zip(handed, exchange.replies))  # the very replies returned


def test_replies_that_carry_no_usable_row_are_left_to_the_screening():
    algorithm = ServerAlgorithm(load_config(None, list(SETTINGS)))
    algorithm.train_sends(1, {})
    good = replies_for(algorithm)
    ((_, stream, _),) = algorithm._rows.streams.values()
    wrong_shape = {k: v.reshape(-1)[:1] for k, v in good[2].arrays.items()}
    for reply in (
        Reply(participant=0, error="the client crashed"),
        Reply(participant=1, arrays=good[1].arrays, reports=good[1].reports, problem="two ArrayRecords"),
        Reply(participant=2, arrays=wrong_shape, reports=good[2].reports),
        Reply(participant=3, reports=good[3].reports),  # no arrays
        Reply(participant=CLIENTS + 5, arrays=good[4].arrays, reports=good[4].reports),  # not sent this round
        Reply(participant=None, arrays=good[5].arrays, reports=[]),  # says nobody
    ):
        algorithm.on_reply(reply)
    assert not any(stream.settled)
    algorithm.on_reply(Reply(participant=None, arrays=good[6].arrays, reports=good[6].reports))  # its own word
    algorithm.on_reply(good[6])  # a second reply for the slot: left for the screening to judge
    assert [s for s, done in enumerate(stream.settled) if done] == [6] and stream.source(6) is not good[6]


def test_under_secure_aggregation_no_row_is_taken():
    settings = [*SETTINGS, "server.aggregator={name: fedavg}", "privacy.secure_aggregation={enabled: true}"]
    algorithm = ServerAlgorithm(load_config(None, settings))
    algorithm.train_sends(1, {})
    assert algorithm._rows is None
    algorithm.on_reply(replies_for(algorithm)[0])  # nothing to write into
