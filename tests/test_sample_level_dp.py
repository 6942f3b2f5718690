"""Sample-level DP inside a client (``privacy.sample_level``, DP-SGD): per-example gradients against
autograd one example at a time, clipping against a hand case, the noise a step carries, each client's
epsilon against ``dp_accounting``'s own computation, the refusals, and a run that reports it all."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
import torch
from dp_accounting import rdp

from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.local.client import MODEL, LocalClient, strip_prefix
from fedmtl.local.data import participant_data
from fedmtl.local.dp_sgd import STEPS_KEY, clip_and_sum, per_example_gradients
from fedmtl.model.networks import initial_shared_state
from tests.helpers import TINY_OVERRIDES
from tests.loopback import run_in_process

PLAIN_SGD = ("client.momentum=0", "client.weight_decay=0", "client.lr=0.1")


def sample_level(clip: float, noise: float) -> str:
    return f"privacy.sample_level={{clip_norm: {clip}, noise_multiplier: {noise}}}"


def test_clipping_scales_each_examples_gradient_to_the_bound_before_the_sum():
    gradients = {"w": torch.tensor([[3.0, 0.0], [0.3, 0.0]]), "b": torch.tensor([[4.0], [0.4]])}  # norms 5, 0.5
    summed = clip_and_sum(gradients, 1.0)
    assert torch.allclose(summed["w"], torch.tensor([3.0 / 5 + 0.3, 0.0]))
    assert torch.allclose(summed["b"], torch.tensor([4.0 / 5 + 0.4]))


@pytest.mark.parametrize("encoder", ["mlp", "cnn"])
def test_per_example_gradients_equal_autograd_one_example_at_a_time(encoder):
    overrides = [*TINY_OVERRIDES]
    if encoder == "cnn":
        overrides += ["data.name=digits", "model.encoder=cnn", "model.conv_channels=[4]", "clients.tasks=[[digit]]"]
        overrides += ["clients.count=1"]
    cfg = load_config(None, overrides)
    client = LocalClient.for_client(cfg, 0)
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
    model = client.build_model(client.own(shared), {})
    task = next(iter(client.specs))
    data = participant_data(cfg, client.participant).train[task]
    x, y = data.x[:5], data.y[:5]
    params = {name: p.detach() for name, p in model.named_parameters()}
    batched, losses = per_example_gradients(model, params, task, client.specs[task], 0.7, x, y)
    for i in range(len(x)):
        model.zero_grad()
        loss = 0.7 * client.specs[task].kind_impl.loss(model(x[i : i + 1], task), y[i : i + 1])
        loss.backward()
        assert losses[i].item() == pytest.approx(loss.item() / 0.7, rel=1e-5)  # unweighted, from the same pass
        for name, p in model.named_parameters():
            expected = torch.zeros_like(p) if p.grad is None else p.grad  # another task's head: no gradient
            assert torch.allclose(batched[name][i], expected, atol=1e-6), (name, i)


def one_step(overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the trained parameters minus the received ones, flat; encoder and heads) after one local step."""
    one_task = ["clients.count=1", "clients.tasks=[[anchor]]", "client.local_steps=1"]
    cfg = load_config(None, [*TINY_OVERRIDES, *PLAIN_SGD, *one_task, *overrides])
    client = LocalClient.for_client(cfg, 0)
    shared = client.own(initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed))
    before = client.build_model(shared, {}).state_dict()
    outcome = client.train(shared, None, 1)
    after = {**outcome.shared, **strip_prefix(MODEL, outcome.private)}
    keys = [k for k in before if k in after and before[k].is_floating_point()]
    return torch.cat([(after[k] - before[k]).reshape(-1) for k in keys]), torch.tensor(cfg.client.batch_size)


def test_without_noise_one_step_moves_the_parameters_by_at_most_lr_times_the_bound():
    moved, _ = one_step([sample_level(1e-3, 0.0)])
    assert 0 < moved.norm() <= 0.1 * 1e-3 * (1 + 1e-5)  # lr * (batch of clipped gradients) / batch
    unclipped, _ = one_step([])
    assert unclipped.norm() > 10 * 0.1 * 1e-3  # the bound is what held it: without DP-SGD it moves far more


def test_each_step_carries_gaussian_noise_of_std_sigma_c_over_the_batch():
    # the clipped signal is at most lr * 1e-9: what moves the parameters is the noise, lr * sigma C / B per coordinate
    moved, batch = one_step([sample_level(1e-9, 1e9)])
    expected = 0.1 * 1e9 * 1e-9 / float(batch)
    assert moved.mean().abs() < 4 * expected / math.sqrt(moved.numel())
    assert moved.std().item() == pytest.approx(expected, rel=4 / math.sqrt(moved.numel()))


def test_each_clients_epsilon_is_the_librarys_for_its_steps_and_sampling_rate():
    cfg = load_config(None, [*TINY_OVERRIDES, "client.local_steps=3", sample_level(1.0, 1.2)])
    client = LocalClient.for_client(cfg, 1)
    shared = client.own(initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed))
    first = client.train(shared, None, 1)
    second = client.train(shared, first.private, 2)
    assert int(second.private[STEPS_KEY]) == 6
    smallest = min(len(d) for d in participant_data(cfg, client.participant).train.values())
    accountant = rdp.RdpAccountant()
    rate = min(cfg.client.batch_size / smallest, 1.0)  # a batch larger than the data holds every example
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(1.2))
    accountant.compose(event, 6)
    assert second.metrics[protocol.SAMPLE_EPSILON] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert first.metrics[protocol.SAMPLE_EPSILON] < second.metrics[protocol.SAMPLE_EPSILON]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["client.balancing=uncertainty"], "client.balancing"),
        (["client.surgery=pcgrad"], "client.surgery"),
        (["client.affinity_every=2"], "client.affinity_every"),
        (["model.encoder={name: resnet, norm: batch}", "data.name=shapes"], "model.encoder.norm"),
    ],
)
def test_what_reads_unclipped_gradients_is_refused(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*TINY_OVERRIDES, sample_level(1.0, 1.0), *overrides])
    assert err.value.path == key, str(err.value)


def test_a_run_reports_every_clients_epsilon_each_round_and_the_largest_in_its_summary(tmp_path):
    run_dir = run_in_process(tmp_path, "run", *TINY_OVERRIDES, "rounds=2", "eval_every=2", sample_level(1.0, 1.0))
    rows = read_rows(run_dir / "clients.jsonl")
    by_client: dict[int, list[float]] = {}
    for row in rows:
        by_client.setdefault(row["client"], []).append(row["sample_epsilon"])
    assert sorted(by_client) == [0, 1, 2] and all(len(e) == 2 and 0 < e[0] < e[1] for e in by_client.values())
    summary = json.loads((run_dir / "summary.json").read_text())["privacy"]["sample_level"]
    assert summary["epsilon_max"] == max(e[-1] for e in by_client.values())
    assert "epsilon" not in json.loads((run_dir / "summary.json").read_text())["privacy"]  # no client-level noise
