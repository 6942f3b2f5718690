"""Sharing modes: inspect real messages; private parameters never leave, the shared set is exactly the config's."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.client_app import make_client_app
from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.local.client import LocalClient
from fedmtl.model.networks import initial_shared_state
from tests.helpers import TINY_OVERRIDES


def config(*extra: str):
    return load_config(None, [*TINY_OVERRIDES, "model.encoder_hidden=[8, 6]", *extra])


def run_rounds(cfg, rounds: int = 2, partition: int = 0):
    app = make_client_app(cfg)
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed)
    context = Context(run_id=1, node_id=3, node_config={"partition-id": partition}, state=RecordDict(), run_config={})
    replies = []
    for r in range(1, rounds + 1):
        message = Message(
            RecordDict(
                {protocol.ARRAYS: ArrayRecord(shared), protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: r})}
            ),
            dst_node_id=3,
            message_type="train",
        )
        reply = app(message, context)
        replies.append(reply)
        shared = dict(reply.content[protocol.ARRAYS].to_torch_state_dict())
    return shared, context, replies


def sent_keys(reply: Message) -> set[str]:
    return {k for record in reply.content.array_records.values() for k in record}


@pytest.mark.parametrize(
    ("sharing", "shared_prefixes"),
    [
        ("{name: hard}", ("encoder.0.", "encoder.1.", "encoder.2.")),
        ("{name: partial, shared_blocks: 1}", ("encoder.0.",)),
        ("{name: partial, shared_blocks: 2}", ("encoder.0.", "encoder.1.")),
        ("{name: adapters, rank: 2}", ("encoder.0.", "encoder.1.", "encoder.2.")),
        ("{name: soft, mu: 0.5}", ("encoder.0.", "encoder.1.", "encoder.2.")),
        ("{name: mmoe, experts: 2}", ("encoder.0.", "encoder.1.")),  # the experts (each of 3 blocks)
    ],
)
def test_exactly_the_configured_parameters_are_sent(sharing, shared_prefixes, flower_identity):
    cfg = config(f"model.sharing={sharing}")
    server_keys = set(initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed))
    assert server_keys and all(k.startswith(shared_prefixes) for k in server_keys)
    assert {k.split(".")[1] for k in server_keys} == {p.split(".")[1] for p in shared_prefixes}

    _, context, replies = run_rounds(cfg)

    private = context.state[protocol.PRIVATE_STATE].to_torch_state_dict()
    for reply in replies:
        assert sent_keys(reply) == server_keys
        assert not sent_keys(reply) & {k.removeprefix("model.") for k in private}, "a private parameter was sent"


def test_partial_sharing_keeps_later_blocks_private_and_trains_them(flower_identity):
    cfg = config("model.sharing={name: partial, shared_blocks: 1}")
    _, context, _ = run_rounds(cfg)
    private = context.state[protocol.PRIVATE_STATE].to_torch_state_dict()
    assert {"model.encoder.1.0.weight", "model.encoder.2.0.weight"} <= set(private)
    fresh = LocalClient.for_client(cfg, 0).build_model({}, {})
    assert not torch.equal(private["model.encoder.1.0.weight"], fresh.state_dict()["encoder.1.0.weight"])


def test_adapters_are_private_per_task(flower_identity):
    cfg = config("model.sharing={name: adapters, rank: 2}")
    _, context, _ = run_rounds(cfg)
    adapters = {
        k for k in context.state[protocol.PRIVATE_STATE].to_torch_state_dict() if k.startswith("model.adapters.")
    }
    tasks = {k.split(".")[2] for k in adapters}
    assert tasks == {"anchor", "aligned"} and len(adapters) == 2 * 3 * 4  # tasks x blocks x (down, up) x (w, b)


def test_soft_sharing_keeps_a_personal_copy_evaluated_separately(flower_identity):
    cfg = config("model.sharing={name: soft, mu: 0.1}")
    shared, context, _ = run_rounds(cfg)
    private = context.state[protocol.PRIVATE_STATE].to_torch_state_dict()
    assert any(k.startswith("personal.encoder.") for k in private)
    client = LocalClient.for_client(cfg, 0)
    [metrics] = client.evaluate(shared, dict(private))
    assert protocol.unflatten_task_metrics(metrics, protocol.PERSONAL).keys() == {"anchor", "aligned"}


def personal_after_round_two(cfg, round_two_global):
    client = LocalClient.for_client(cfg, 0)
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed)
    first = client.train(shared, None, 1)
    second = client.train(round_two_global(first.shared), first.private, 2)
    return {k: v for k, v in second.private.items() if k.startswith("personal.")}


@pytest.mark.parametrize(("mu", "independent"), [(0.0, True), (1.0, False)])
def test_soft_with_mu_zero_is_plain_local_training(mu, independent):
    """mu = 0: the personal copy never feels the global encoder; mu > 0: it is pulled towards it."""
    cfg = config(f"model.sharing={{name: soft, mu: {mu}}}")
    as_sent = personal_after_round_two(cfg, lambda s: s)
    perturbed = personal_after_round_two(cfg, lambda s: {k: v + 0.5 for k, v in s.items()})
    same = all(torch.equal(as_sent[k], perturbed[k]) for k in as_sent)
    assert same is independent


def test_sharing_settings_and_encoder_check():
    from fedmtl.methods.sharing import Adapters, Partial, Soft

    assert Adapters(rank=1).rank == 1
    for make, message in [
        (lambda: Adapters(rank=0), "rank must be >= 1, got 0"),
        (lambda: Partial(shared_blocks=0), "shared_blocks must be >= 1, got 0"),
        (lambda: Soft(mu=-0.5), "mu must be >= 0, got -0.5"),
    ]:
        with pytest.raises(ValueError) as raised:
            make()
        assert str(raised.value) == message
    assert Partial(shared_blocks=3).check(3) is None  # every block shared: allowed
    assert Partial(shared_blocks=4).check(3) == "shared_blocks is 4 but the encoder has 3 blocks"
