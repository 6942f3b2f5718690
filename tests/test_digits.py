"""The digits suite (real data shipped with scikit-learn) and the CNN encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.data.suites.digits import dirichlet_partition, load_digit_images
from fedmtl.local.client import LocalClient
from fedmtl.model.networks import initial_shared_state


def test_dirichlet_partition_covers_every_sample_once_and_skews_labels():
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(labels, 5, alpha=0.1, rng=np.random.default_rng(0))
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(1000))
    skewed = [np.bincount(labels[p], minlength=10).max() / max(len(p), 1) for p in parts if len(p)]
    uniform = [
        np.bincount(labels[p], minlength=10).max() / len(p)
        for p in dirichlet_partition(labels, 5, 1000.0, np.random.default_rng(0))
    ]
    assert np.mean(skewed) > 2 * np.mean(uniform)


def test_task_labels_are_derived_from_the_digit():
    cfg = load_config(None, ["data.name=digits", "clients.count=2", "clients.tasks_per_client=4"])
    data = cfg.data.client_data(
        cfg.seed,
        __import__("fedmtl.data.partition", fromlist=["client_plan"]).client_plan(cfg.clients, cfg.data, cfg.seed, 0),
    )
    images, _ = load_digit_images()
    digit, parity = data.train["digit"].y, data.train["parity"].y
    assert torch.equal(parity, digit % 2)
    assert torch.equal(data.train["geq5"].y, (digit >= 5).long())
    assert torch.equal(data.train["loops"].y, torch.isin(digit, torch.tensor([0, 6, 8, 9])).long())
    assert data.train["digit"].x.shape[1] == 64 and float(data.train["digit"].x.max()) <= 1.0
    assert len(data.eval["digit"]) > 0


def test_task_sample_scale_subsamples_a_task():
    cfg = load_config(
        None,
        [
            "data.name=digits",
            "clients.count=2",
            "clients.tasks=[[digit, parity], [parity]]",
            "clients.task_sample_scale={parity: 0.25}",
        ],
    )
    from fedmtl.data.partition import client_plan
    from fedmtl.local.data import client_data

    train = client_data(cfg, 0).train
    assert len(train["parity"]) == pytest.approx(len(train["digit"]) * 0.25, abs=1)
    assert client_plan(cfg.clients, cfg.data, cfg.seed, 0).task_scale == (1.0, 0.25)


def test_cnn_encoder_trains_on_digits_and_shares_conv_blocks():
    cfg = load_config(
        None,
        [
            "data.name=digits",
            "clients.count=2",
            "model.encoder=cnn",
            "model.conv_channels=[4, 8]",
            "client.local_steps=3",
            "model.sharing={name: partial, shared_blocks: 2}",
        ],
    )
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
    assert {k.split(".")[1] for k in shared} == {"0", "1"}, "the two conv blocks are shared, the linear block is not"
    outcome = LocalClient.for_client(cfg, 1).train(shared, None, 1)
    assert outcome.shared.keys() == shared.keys()
    assert any(k.startswith("model.encoder.2.") for k in outcome.private)


def test_cnn_needs_an_image_suite():
    with pytest.raises(ConfigError, match="model.encoder: cnn needs an image suite"):
        load_config(None, ["model.encoder=cnn"])
    with pytest.raises(ConfigError, match="adapters"):
        load_config(None, ["data.name=digits", "model.encoder=cnn", "model.sharing.name=adapters"])
