"""The hub suite on small datasets saved to disk: CelebA-like attributes as tasks, identities as clients."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.data.partition import client_plan
from fedmtl.data.suites import HubSuite, TargetColumn
from fedmtl.local.client import LocalClient
from fedmtl.model.networks import initial_shared_state

datasets = pytest.importorskip("datasets")

NUM_ROWS, NUM_IDENTITIES = 60, 6
TARGETS = "[{column: smiling, kind: classification}, {column: eyeglasses, kind: classification}, {column: hair, kind: classification}]"


def celeb_like(seed: int = 0) -> datasets.Dataset:
    """Small RGB images, two bool attributes (``eyeglasses`` missing in every 4th row), a
    ``ClassLabel`` attribute, an identity column, a row id and a numeric ``age`` column."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)) for _ in range(NUM_ROWS)]
    features = datasets.Features({
        "image": datasets.Image(), "smiling": datasets.Value("bool"), "eyeglasses": datasets.Value("bool"),
        "hair": datasets.ClassLabel(names=["black", "blond", "brown"]), "celeb_id": datasets.Value("int64"),
        "rid": datasets.Value("int64"), "age": datasets.Value("float32"),
    })  # fmt: skip
    return datasets.Dataset.from_dict(
        {
            "image": images,
            "smiling": [bool(v) for v in rng.integers(0, 2, NUM_ROWS)],
            "eyeglasses": [None if i % 4 == 0 else bool(i % 3 == 0) for i in range(NUM_ROWS)],
            "hair": [i % 3 for i in range(NUM_ROWS)],
            "celeb_id": [100 + i % NUM_IDENTITIES for i in range(NUM_ROWS)],
            "rid": list(range(NUM_ROWS)),
            "age": rng.normal(40, 10, NUM_ROWS).tolist(),
        },
        features=features,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hub") / "celeb_like"
    celeb_like().save_to_disk(str(path))
    return path


def hub_config(dataset: Path | str, *overrides: str):
    return load_config(
        None,
        [
            "data.name=hub",
            f"data.dataset={dataset}",
            f"data.targets={TARGETS}",
            "data.image_size=8",
            "clients.count=3",
            "clients.tasks_per_client=3",
            *overrides,
        ],
    )


def all_client_data(cfg):
    return [
        cfg.data.client_data(cfg.seed, client_plan(cfg.clients, cfg.data, cfg.seed, c))
        for c in range(cfg.clients.count)
    ]


def test_image_tasks_and_natural_partitions(saved):
    cfg = hub_config(saved, "data.client_column=celeb_id")
    assert cfg.data.image_shape() == (1, 8, 8) and cfg.data.feature_dim() == 64
    assert [(s.name, s.num_classes) for s in cfg.data.task_specs()] == [("smiling", 2), ("eyeglasses", 2), ("hair", 3)]
    assert cfg.data.class_names("hair") == ("black", "blond", "brown") and cfg.data.class_names("smiling") == ("0", "1")
    assert cfg.data.check_clients(3) is None and "clients.count <= 6" in cfg.data.check_clients(7)
    totals = {"smiling": 0, "eyeglasses": 0}
    for data in all_client_data(cfg):
        x = data.train["smiling"].x
        assert x.shape[1] == 64 and x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        held = len(data.train["smiling"]) + len(data.eval["smiling"])
        assert held == 2 * NUM_ROWS // NUM_IDENTITIES  # identities 100 + {c, c + 3}: two per client
        for task in totals:
            totals[task] += len(data.train[task]) + len(data.eval[task])
    assert totals == {"smiling": NUM_ROWS, "eyeglasses": NUM_ROWS - NUM_ROWS // 4}


def test_partitions_hold_the_identities_rows(saved):
    cfg = hub_config(saved, "data.client_column=celeb_id", "data.features=[rid, age]", "data.standardize=none")
    assert cfg.data.image_shape() is None and cfg.data.feature_dim() == 2
    for client, data in enumerate(all_client_data(cfg)):
        rows = sorted(int(r) for r in torch.cat([data.train["hair"].x[:, 0], data.eval["hair"].x[:, 0]]).tolist())
        assert rows == [i for i in range(NUM_ROWS) if i % NUM_IDENTITIES % 3 == client]
        assert data.train["hair"].y.tolist() == [
            int(r) % 3 for r in data.train["hair"].x[:, 0].tolist()
        ]  # ClassLabel codes kept


def test_numeric_features_are_standardised_with_training_rows(saved):
    cfg = hub_config(saved, "data.features=[age]", "data.dirichlet_alpha=0.5")
    clients = all_client_data(cfg)
    train = torch.cat([d.train["smiling"].x for d in clients]).double()
    assert abs(float(train.mean())) < 1e-5 and abs(float(train.std(unbiased=False)) - 1) < 1e-5
    again = all_client_data(hub_config(saved, "data.features=[age]", "data.dirichlet_alpha=0.5"))
    assert all(torch.equal(a.train["hair"].x, b.train["hair"].x) for a, b in zip(clients, again))


def test_dataset_dict_split_rgb_and_max_examples(tmp_path):
    datasets.DatasetDict({"train": celeb_like(0), "test": celeb_like(1).select(range(30))}).save_to_disk(
        str(tmp_path / "dd")
    )
    cfg = hub_config(
        tmp_path / "dd", "data.split=test", "data.grayscale=false", "data.max_examples=20", "data.eval_fraction=0.25"
    )
    assert cfg.data.image_shape() == (3, 8, 8)
    data = all_client_data(cfg)
    assert sum(len(d.train["smiling"]) + len(d.eval["smiling"]) for d in data) == 20
    with pytest.raises(ConfigError, match="unknown split 'validation'; .* has train, test") as caught:
        hub_config(tmp_path / "dd", "data.split=validation")
    assert caught.value.path == "data.split"


def test_python_construction(saved):
    suite = HubSuite(dataset=str(saved), targets=[TargetColumn("smiling", "classification")], image_size=4)
    assert suite.task_names() == ("smiling",) and suite.image_shape() == (1, 4, 4)


ERRORS = [
    (
        ["data.targets=[{column: nope, kind: classification}]"],
        "data.targets[0].column",
        "unknown column 'nope'; columns: image, smiling",
    ),
    (["data.targets=[{column: image, kind: classification}]"], "data.targets[0]", "holds Image values, not scalars"),
    (["data.client_column=nope"], "data.client_column", "unknown column 'nope'"),
    (["data.features=[image, age]"], "data.features", "an image column must be the only feature"),
    (["data.image_size=0"], "data.image_size", "must be >= 1"),
    (["data.client_column=celeb_id", "data.dirichlet_alpha=1.0"], "data.dirichlet_alpha", "set one of the two"),
]


@pytest.mark.parametrize(("overrides", "key", "message"), ERRORS, ids=[e[1] for e in ERRORS])
def test_config_errors_name_the_key(saved, overrides, key, message):
    with pytest.raises(ConfigError, match=message) as caught:
        hub_config(saved, *overrides)
    assert caught.value.path == key


def test_unreachable_hub_dataset_is_a_config_error_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ConfigError, match="'fedmtl-tests/no-such-dataset' is not a local dataset folder and offline mode is on"
    ) as caught:
        hub_config("fedmtl-tests/no-such-dataset")
    assert caught.value.path == "data.dataset"


def test_missing_datasets_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match=r"pip install 'fedmtl\[hub\]'"):
        HubSuite(dataset=str(tmp_path / "never-loaded"), targets=[TargetColumn("smiling", "classification")])


def test_a_hub_client_trains_a_cnn_and_evaluates(saved):
    cfg = hub_config(
        saved, "data.client_column=celeb_id", "model.encoder=cnn", "model.conv_channels=[4]", "model.representation_dim=4",
        "model.head_hidden=[]", "client.local_steps=2", "client.batch_size=8",
    )  # fmt: skip
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
    client = LocalClient.for_client(cfg, 2)
    outcome = client.train(shared, None, 1)
    assert outcome.shared.keys() == shared.keys() and all(np.isfinite(v) for v in outcome.metrics.values())
    metrics = protocol.unflatten_task_metrics(client.evaluate(outcome.shared, outcome.private)[0], protocol.EVAL)
    assert set(metrics) == set(client.participant.tasks) and all(0 <= m["accuracy"] <= 1 for m in metrics.values())
