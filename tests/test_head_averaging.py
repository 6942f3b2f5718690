"""Federated heads (the fed_full design): per-task FedAvg among the clients that hold the task."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.core.params import split_heads
from fedmtl.federation.head_averaging import HeadAverager


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


def test_across_tasks_every_task_gets_the_example_weighted_mean_of_all_copies():
    initial = {
        "heads.a.w": torch.zeros(2),
        "heads.b.w": torch.ones(2),
        "heads.a.b": torch.zeros(1),
        "heads.b.b": torch.ones(1),
    }
    averager = HeadAverager(initial, across_tasks=True)
    assert torch.equal(averager.heads["heads.a.w"], averager.heads["heads.b.w"])  # one head from the start
    client_heads = [{"heads.a.w": torch.tensor([1.0, 1.0]), "heads.a.b": torch.tensor([1.0])},
                    {"heads.b.w": torch.tensor([4.0, -2.0]), "heads.b.b": torch.tensor([4.0])}]  # fmt: skip
    averager.step(client_heads, [{"a": 10.0}, {"b": 30.0}])
    expected_w = torch.tensor([(10 * 1 + 30 * 4) / 40, (10 * 1 - 30 * 2) / 40])
    for task in ("a", "b"):
        assert torch.allclose(averager.heads[f"heads.{task}.w"], expected_w)
        assert torch.allclose(averager.heads[f"heads.{task}.b"], torch.tensor([(10 + 120) / 40]))


def test_across_tasks_refuses_heads_of_different_shapes(tmp_path):
    with pytest.raises(ValueError, match="one shape"):
        HeadAverager({"heads.a.w": torch.zeros(2), "heads.b.w": torch.zeros(3)}, across_tasks=True)
    with pytest.raises(ConfigError) as caught:  # the config says so before anything runs
        load_config(None, ["server.federate_heads=true", "server.heads_across_tasks=true"])
    assert caught.value.path == "server.heads_across_tasks" and "one shape" in str(caught.value)
    with pytest.raises(ConfigError, match="needs server.federate_heads"):
        load_config(None, ["data.name=digits", "data.tasks=[parity, geq5]", "server.heads_across_tasks=true"])
    load_config(None, ["data.name=digits", "data.tasks=[parity, geq5]", "server.federate_heads=true",
                       "server.heads_across_tasks=true"])  # fmt: skip


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
    client = LocalClient.for_client(cfg, 0)
    outcome = client.train(shared, None, 1)
    sent_heads = {k.split(".")[1] for k in outcome.shared if k.startswith("heads.")}
    assert sent_heads == set(client.specs) and len(sent_heads) < len(specs)
    assert not any(k.startswith("model.heads.") for k in outcome.private)  # heads are not private any more


def test_federated_heads_are_sent_with_the_encoder_and_a_checkpoint_must_agree_on_them():
    import re

    from fedmtl.federation.algorithm import ServerAlgorithm
    from fedmtl.model.networks import initial_head_state
    from tests.helpers import tiny_overrides

    plain_cfg = load_config(None, list(tiny_overrides(2)))
    heads_cfg = load_config(None, [*tiny_overrides(2), "server.federate_heads=true"])
    plain, with_heads = ServerAlgorithm(plain_cfg), ServerAlgorithm(heads_cfg)
    head_keys = set(initial_head_state(heads_cfg.model, heads_cfg.data.feature_dim(), heads_cfg.data.task_specs(), 0))
    assert head_keys and all(k.startswith("heads.") for k in head_keys)
    assert set(with_heads.state_for(0)) == set(plain.state_for(0)) | head_keys
    assert not head_keys & set(plain.state_for(0))
    message = "the checkpoint and server.federate_heads disagree on federated heads: resume with the run's config"
    for run, checkpoint in [(with_heads, plain), (plain, with_heads)]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            run.load_state_dict(checkpoint.state_dict())


def test_every_instruction_carries_the_federated_heads_the_server_holds():
    from fedmtl.core.messages import TRAIN
    from fedmtl.federation.algorithm import ServerAlgorithm
    from tests.helpers import tiny_overrides

    algorithm = ServerAlgorithm(load_config(None, [*tiny_overrides(2), "server.federate_heads=true"]))
    assert algorithm.heads is not None
    expected = algorithm.heads.state_dict()
    sends = algorithm.sends(TRAIN, 1, {})
    assert len(sends) == 2
    for send in sends:
        for key, value in expected.items():
            assert torch.equal(send.arrays[key], value)


def test_federated_heads_of_an_image_workload_are_the_clients_heads():
    """A CNN encoder needs the image's shape to build the model whose heads the server starts from."""
    from fedmtl.federation.algorithm import ServerAlgorithm
    from fedmtl.local.client import LocalClient

    cfg = load_config(
        None,
        ["data.name=digits", "model.encoder=cnn", "model.conv_channels=[4,8]", "model.representation_dim=8",
         "clients.count=2", "server.federate_heads=true"],
    )  # fmt: skip
    server = ServerAlgorithm(cfg)
    assert server.heads is not None
    client = LocalClient.for_client(cfg, 0)
    model_heads = {k: v for k, v in client.build_model({}, {}).state_dict().items() if k.startswith("heads.")}
    server_heads = server.heads.state_dict()
    assert model_heads and set(model_heads) <= set(server_heads)
    assert all(server_heads[k].shape == v.shape for k, v in model_heads.items())


def test_heads_across_tasks_reach_the_servers_averager():
    from fedmtl.federation.algorithm import ServerAlgorithm

    overrides = ["data.name=digits", "data.tasks=[parity, geq5]", "clients.count=2", "server.federate_heads=true"]
    per_task = ServerAlgorithm(load_config(None, overrides)).heads
    shared = ServerAlgorithm(load_config(None, [*overrides, "server.heads_across_tasks=true"])).heads
    assert per_task is not None and shared is not None
    assert len(shared.groups) * 2 == len(per_task.groups)  # each parameter: one average over both tasks' copies
    parity, geq5 = shared.state_dict()["heads.parity.0.weight"], shared.state_dict()["heads.geq5.0.weight"]
    assert torch.equal(parity, geq5)  # one head from the start
