"""What crosses the wire: heads stay in client state, only encoder keys travel, replies are screened."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.client_app import make_client_app
from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.params import ENCODER_PREFIX
from fedmtl.federation.algorithm import ServerAlgorithm, TrainResult
from fedmtl.model.networks import initial_encoder_state
from server.engines.grid import to_reply
from tests.helpers import TINY_OVERRIDES


def _train_message(arrays: dict, server_round: int) -> Message:
    content = RecordDict(
        {protocol.ARRAYS: ArrayRecord(arrays), protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: server_round})}
    )
    return Message(content, dst_node_id=11, message_type="train")


def _context(partition: int) -> Context:
    return Context(
        run_id=1,
        node_id=11,
        node_config={"partition-id": partition, "num-partitions": 3},
        state=RecordDict(),
        run_config={},
    )


def _all_array_keys(message: Message) -> set[str]:
    return {key for record in message.content.array_records.values() for key in record}


def test_client_round_trip_keeps_heads_private_and_sends_only_encoder(tiny_config, flower_identity):
    app = make_client_app(tiny_config)
    encoder = initial_encoder_state(tiny_config.model, tiny_config.data.feature_dim(), tiny_config.seed)
    context = _context(partition=1)

    reply = app(_train_message(encoder, 1), context)
    sent = _all_array_keys(reply)
    assert sent == set(encoder), "reply must carry exactly the encoder keys"
    assert all(key.startswith(ENCODER_PREFIX) for key in sent)
    assert list(reply.content.metric_records) == [protocol.METRICS]
    assert reply.content[protocol.METRICS][protocol.PARTICIPANT] == 1
    assert not any("heads" in key for key in reply.content[protocol.METRICS])

    heads_after_round_1 = context.state[protocol.PRIVATE_STATE].to_torch_state_dict()
    assert heads_after_round_1 and all(key.startswith("model.heads.") for key in heads_after_round_1)
    held = {key.split(".")[2] for key in heads_after_round_1}
    assert held == set(tiny_config.data.task_names()[1:3]), "client 1 holds tasks 1 and 2"

    reply2 = app(_train_message(reply.content[protocol.ARRAYS].to_torch_state_dict(), 2), context)
    assert _all_array_keys(reply2) == set(encoder)
    heads_after_round_2 = context.state[protocol.PRIVATE_STATE].to_torch_state_dict()
    changed = [k for k in heads_after_round_1 if not torch.equal(heads_after_round_1[k], heads_after_round_2[k])]
    assert changed, "round 2 must continue from (and update) the heads kept in client state"


def test_evaluate_reply_carries_no_arrays(tiny_config, flower_identity):
    app = make_client_app(tiny_config)
    encoder = initial_encoder_state(tiny_config.model, tiny_config.data.feature_dim(), tiny_config.seed)
    message = Message(
        RecordDict({protocol.ARRAYS: ArrayRecord(encoder), protocol.CONFIG: ConfigRecord()}),
        dst_node_id=11,
        message_type="evaluate",
    )
    reply = app(message, _context(partition=0))
    assert not reply.content.array_records
    assert protocol.unflatten_task_metrics(reply.content[protocol.METRICS], protocol.EVAL).keys() == {
        "anchor",
        "aligned",
    }


def test_outgoing_shared_refuses_private_parameters():
    state = {"encoder.0.weight": torch.zeros(2), "heads.a.0.weight": torch.zeros(2)}
    with pytest.raises(protocol.PrivacyViolation, match="heads.a.0.weight"):
        protocol.outgoing_shared(state, ["encoder.0.weight"])


def _reply(request: Message, arrays: dict, client: int, examples: float) -> Message:
    metrics = MetricRecord(
        {
            protocol.CLIENT_ID: client,
            protocol.PARTICIPANT: client,
            protocol.NUM_EXAMPLES: examples,
            protocol.TRAIN_LOSS: 1.0,
        }
    )
    return Message(RecordDict({protocol.ARRAYS: ArrayRecord(arrays), protocol.METRICS: metrics}), reply_to=request)


def _algorithm(*overrides: str) -> ServerAlgorithm:
    return ServerAlgorithm(load_config(None, [*TINY_OVERRIDES, "server.aggregator={name: fedavg}", *overrides]))


def _aggregate(algorithm: ServerAlgorithm, replies: list[Message], known: bool = False) -> TrainResult:
    """The round's replies as the grid adapter converts them (``known``: the engine knows each node's
    participant, here node 11 plays participant 0), screened and aggregated."""
    sends = algorithm.train_sends(1, {})
    return algorithm.aggregate(sends, [to_reply(m, 0 if known else None) for m in replies])


def _shifted(state: dict, by: float) -> dict:
    return {k: v + by for k, v in state.items()}


def test_fedavg_over_encoder_deltas_is_the_example_weighted_mean(flower_identity):
    algorithm = _algorithm()
    initial = algorithm.cohorts[0].global_state()
    torch.manual_seed(0)
    clients = [{k: v + torch.randn_like(v) for k, v in initial.items()} for _ in range(3)]
    counts = [10.0, 30.0, 60.0]
    request = _train_message(initial, 1)
    replies = [_reply(request, state, cid, n) for cid, (state, n) in reversed(list(enumerate(zip(clients, counts))))]

    result = _aggregate(algorithm, replies)

    new = algorithm.cohorts[0].global_state()
    for key in initial:
        expected = sum(n * c[key] for n, c in zip(counts, clients)) / sum(counts)
        assert torch.allclose(new[key], expected, atol=1e-6)
    assert result.accepted == [0, 1, 2] and result.replies == 3
    assert result.cohorts[0].diagnostics.weights == pytest.approx([0.1, 0.3, 0.6])


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda s: {**s, "heads.t.weight": torch.zeros(1)}, "unexpected keys"),
        (lambda s: dict(list(s.items())[1:]), "missing keys"),
        (lambda s: {**s, next(iter(s)): torch.zeros(4)}, "shape"),
        (lambda s: {k: torch.full_like(v, float("nan")) for k, v in s.items()}, "non-finite"),
    ],
)
def test_bad_replies_are_rejected_with_a_reason_and_the_round_goes_on(flower_identity, corrupt, reason):
    algorithm = _algorithm()
    initial = algorithm.cohorts[0].global_state()
    good = _shifted(initial, 1.0)
    request = _train_message(initial, 1)

    result = _aggregate(algorithm, [_reply(request, good, 0, 5.0), _reply(request, corrupt(good), 1, 5.0)])

    assert result.accepted == [0]
    [(client, why)] = result.rejected
    assert client == 1 and reason in why
    assert all(torch.equal(algorithm.cohorts[0].global_state()[k], good[k]) for k in good)


def test_a_reply_with_other_array_records_is_rejected(flower_identity):
    algorithm = _algorithm()
    initial = algorithm.cohorts[0].global_state()
    request = _train_message(initial, 1)
    odd = _reply(request, _shifted(initial, 1.0), 1, 5.0)
    odd.content["extra"] = ArrayRecord({"x": torch.zeros(1)})
    result = _aggregate(algorithm, [_reply(request, _shifted(initial, 1.0), 0, 5.0), odd])
    assert result.accepted == [0] and "exactly one ArrayRecord" in result.rejected[0][1]


def test_updates_beyond_max_update_norm_are_rejected(flower_identity):
    algorithm = _algorithm("server.max_update_norm=1.0")
    initial = algorithm.cohorts[0].global_state()
    size = sum(v.numel() for v in initial.values())
    small, large = _shifted(initial, 0.1 / size**0.5), _shifted(initial, 30.0 / size**0.5)  # norms 0.1 and 30
    request = _train_message(initial, 1)

    result = _aggregate(algorithm, [_reply(request, small, 0, 5.0), _reply(request, large, 1, 5.0)])

    assert result.accepted == [0]
    [(client, why)] = result.rejected
    assert client == 1 and "server.max_update_norm" in why and "30" in why
    assert all(torch.allclose(algorithm.cohorts[0].global_state()[k], small[k]) for k in small)


def test_a_reply_speaks_once_and_only_for_its_own_participant(flower_identity):
    algorithm = _algorithm()
    initial = algorithm.cohorts[0].global_state()
    update = _shifted(initial, 1.0)
    request = _train_message(initial, 1)

    twice = _aggregate(algorithm, [_reply(request, update, 0, 5.0), _reply(request, update, 0, 5.0)])
    assert twice.accepted == [0] and twice.rejected == [(0, "participant 0 already replied this round")]

    borrowed = _aggregate(_algorithm(), [_reply(request, update, 0, 5.0), _reply(request, update, 1, 5.0)], known=True)
    assert borrowed.accepted == [0]
    assert borrowed.rejected == [(1, "participant 1 does not belong to the node asked for participant 0")]


def test_a_reply_without_metrics_is_rejected_without_a_client(flower_identity):
    algorithm = _algorithm()
    initial = algorithm.cohorts[0].global_state()
    request = _train_message(initial, 1)
    silent = Message(RecordDict({protocol.ARRAYS: ArrayRecord(_shifted(initial, 1.0))}), reply_to=request)
    result = _aggregate(algorithm, [_reply(request, _shifted(initial, 1.0), 0, 5.0), silent])
    assert result.accepted == [0]
    [(client, why)] = result.rejected
    assert client is None and why


def test_a_checkpoint_from_before_affinity_probes_restores_and_the_next_round_is_sent():
    algorithm = _algorithm()
    state = algorithm.state_dict()
    del state["probes"]  # written by a version without client affinity
    restored = _algorithm()
    restored.load_state_dict(state)
    assert len(restored.train_sends(2, {})) == len(algorithm.train_sends(2, {})) > 0
