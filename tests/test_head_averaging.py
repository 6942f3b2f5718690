"""Federated heads (the fed_full design): per-task FedAvg among the clients that hold the task."""

from __future__ import annotations

import torch

from fedmtl.federation.head_averaging import HeadAverager, split_heads


def test_each_head_is_the_example_weighted_mean_of_its_holders_and_others_keep_their_value():
    initial = {"heads.a.w": torch.zeros(2), "heads.b.w": torch.zeros(2), "heads.c.w": torch.full((2,), 7.0)}
    averager = HeadAverager(initial)
    client_heads = [
        {"heads.a.w": torch.tensor([1.0, 1.0]), "heads.b.w": torch.tensor([4.0, 0.0])},
        {"heads.a.w": torch.tensor([4.0, -2.0])},
    ]
    examples = [{"a": 10.0, "b": 3.0}, {"a": 20.0}]
    averager.step(client_heads, examples)
    assert torch.allclose(averager.heads["heads.a.w"], torch.tensor([(10 * 1 + 20 * 4) / 30, (10 * 1 - 20 * 2) / 30]))
    assert torch.equal(averager.heads["heads.b.w"], torch.tensor([4.0, 0.0]))  # one holder: its copy
    assert torch.equal(averager.heads["heads.c.w"], torch.full((2,), 7.0))  # nobody sent it


def test_split_heads_separates_encoder_from_heads():
    encoder, heads = split_heads({"encoder.0.w": torch.zeros(1), "heads.t.0.w": torch.ones(1)})
    assert list(encoder) == ["encoder.0.w"] and list(heads) == ["heads.t.0.w"]


def test_client_with_federated_heads_receives_and_sends_only_its_own_heads(tiny_config):
    from dataclasses import replace

    from fedmtl.local.client import LocalClient
    from fedmtl.model.networks import initial_head_state, initial_shared_state

    cfg = replace(tiny_config, server=replace(tiny_config.server, federate_heads=True))
    specs = cfg.data.task_specs()
    heads = initial_head_state(cfg.model, cfg.data.feature_dim(), specs, cfg.seed)
    shared = {**initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed), **heads}
    client = LocalClient(cfg, 0)
    outcome = client.train(shared, None, 1)
    sent_heads = {k.split(".")[1] for k in outcome.shared if k.startswith("heads.")}
    assert sent_heads == set(client.specs) and len(sent_heads) < len(specs)
    assert not any(k.startswith("model.heads.") for k in outcome.private)  # heads are not private any more
