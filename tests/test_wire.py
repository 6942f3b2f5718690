"""What crosses the wire: heads stay in client state, only encoder keys travel, replies are screened."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.client_app import make_client_app
from fedmtl.config.sections import ServerOptimizerConfig
from fedmtl.core import protocol
from fedmtl.core.params import ENCODER_PREFIX
from fedmtl.federation.rounds import ClientSampler, ServerState
from fedmtl.federation.server_update import ServerUpdater
from fedmtl.methods.aggregation import FedAvg
from fedmtl.model.networks import initial_encoder_state
from server.strategy import EncoderStrategy


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
    metrics = MetricRecord({protocol.CLIENT_ID: client, protocol.NUM_EXAMPLES: examples, protocol.TRAIN_LOSS: 1.0})
    return Message(RecordDict({protocol.ARRAYS: ArrayRecord(arrays), protocol.METRICS: metrics}), reply_to=request)


def _strategy(initial: dict, max_update_norm: float | None = None) -> EncoderStrategy:
    state = ServerState(ServerUpdater(initial, FedAvg(), ServerOptimizerConfig(), seed=0), ClientSampler(0, 1.0, 1.0))
    return EncoderStrategy(state, max_update_norm)


def test_fedavg_over_encoder_deltas_is_the_example_weighted_mean(flower_identity):
    torch.manual_seed(0)
    initial = {"encoder.w": torch.randn(3, 2), "encoder.b": torch.randn(3)}
    clients = [{k: v + torch.randn_like(v) for k, v in initial.items()} for _ in range(3)]
    counts = [10.0, 30.0, 60.0]
    strategy = _strategy(initial)
    request = _train_message(initial, 1)
    replies = [_reply(request, state, cid, n) for cid, (state, n) in reversed(list(enumerate(zip(clients, counts))))]

    arrays, summary = strategy.aggregate_train(1, replies)  # Flower's hook, as Strategy.start calls it

    result = arrays.to_torch_state_dict()
    for key in initial:
        expected = sum(n * c[key] for n, c in zip(counts, clients)) / sum(counts)
        assert torch.allclose(result[key], expected, atol=1e-6)
    assert summary["num-accepted"] == 3
    report = _strategy(initial).aggregate(1, replies)  # fedmtl's round driver reads the report
    assert report.accepted == [0, 1, 2] and report.replies == 3
    assert report.diagnostics.weights == pytest.approx([0.1, 0.3, 0.6])


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda s: {**s, "heads.t.weight": torch.zeros(1)}, "unexpected keys"),
        (lambda s: {"encoder.w": s["encoder.w"]}, "missing keys"),
        (lambda s: {**s, "encoder.b": torch.zeros(4)}, "shape"),
        (lambda s: {**s, "encoder.b": torch.tensor([0.0, float("nan"), 0.0])}, "non-finite"),
    ],
)
def test_bad_replies_are_rejected_with_a_reason_and_the_round_goes_on(flower_identity, corrupt, reason):
    initial = {"encoder.w": torch.zeros(3, 2), "encoder.b": torch.zeros(3)}
    good = {k: v + 1.0 for k, v in initial.items()}
    strategy = _strategy(initial)
    request = _train_message(initial, 1)

    report = strategy.aggregate(1, [_reply(request, good, 0, 5.0), _reply(request, corrupt(good), 1, 5.0)])

    assert report.accepted == [0]
    [(client, why)] = report.rejected
    assert client == 1 and reason in why
    assert torch.equal(strategy.state.global_state()["encoder.b"], good["encoder.b"])


def test_updates_beyond_max_update_norm_are_rejected(flower_identity):
    initial = {"encoder.w": torch.zeros(3, 2), "encoder.b": torch.zeros(3)}
    small = {k: v + 0.1 for k, v in initial.items()}  # norm 0.1 * 3 = 0.3
    large = {k: v + 10.0 for k, v in initial.items()}  # norm 30
    strategy = _strategy(initial, max_update_norm=1.0)
    request = _train_message(initial, 1)

    report = strategy.aggregate(1, [_reply(request, small, 0, 5.0), _reply(request, large, 1, 5.0)])

    assert report.accepted == [0]
    [(client, why)] = report.rejected
    assert client == 1 and "server.max_update_norm" in why and "30" in why
    assert torch.allclose(strategy.state.global_state()["encoder.b"], small["encoder.b"])


def test_a_reply_speaks_once_and_only_for_its_own_node(flower_identity):
    initial = {"encoder.w": torch.zeros(3, 2), "encoder.b": torch.zeros(3)}
    update = {k: v + 1.0 for k, v in initial.items()}
    request = _train_message(initial, 1)  # addressed to node 11: every reply comes from node 11

    twice = _strategy(initial).aggregate(1, [_reply(request, update, 0, 5.0), _reply(request, update, 0, 5.0)])
    assert twice.accepted == [0] and twice.rejected == [(0, "client id 0 already replied this round")]

    state = ServerState(ServerUpdater(initial, FedAvg(), ServerOptimizerConfig(), seed=0), ClientSampler(0, 1.0, 1.0))
    strategy = EncoderStrategy(state, client_nodes={0: 11, 1: 12})
    borrowed = strategy.aggregate(1, [_reply(request, update, 0, 5.0), _reply(request, update, 1, 5.0)])
    assert borrowed.accepted == [0] and borrowed.rejected == [(1, "client id 1 does not belong to node 11")]
