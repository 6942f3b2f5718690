"""NYUD-v2 from local files in FedHCA²'s layout, on a tiny fixture the test writes (a few images of a few
pixels): every label's encoding, resizing, the split among clients, a federation on it, and a broken
layout refused naming ``data.root``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.data.dense_kinds import IGNORE_INDEX
from fedmtl.data.partition import client_plan
from tests.loopback import run_in_process

HEIGHT, WIDTH = 8, 10


def write_nyud(root: Path, train: int = 6, val: int = 3) -> Path:
    """FedHCA²'s NYUD-v2 layout with ``train`` + ``val`` random images; image k's pixels encode k."""
    rng = np.random.default_rng(0)
    for folder in ("gt_sets", "images", "segmentation", "depth", "normals", "edge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"{k:04d}" for k in range(train + val)]
    (root / "gt_sets" / "train.txt").write_text("\n".join(ids[:train]) + "\n")
    (root / "gt_sets" / "val.txt").write_text("\n".join(ids[train:]) + "\n")
    for k, image_id in enumerate(ids):
        pixels = np.full((HEIGHT, WIDTH, 3), 10 * k, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{image_id}.png")
        labels = rng.integers(0, 41, size=(HEIGHT, WIDTH)).astype(np.uint8)
        Image.fromarray(labels).save(root / "segmentation" / f"{image_id}.png")
        depth = rng.uniform(0.5, 5.0, size=(HEIGHT, WIDTH)).astype(np.float32)
        depth[0, 0] = 0.0  # missing
        np.save(root / "depth" / f"{image_id}.npy", depth)
        normals = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        normals[..., 2] = 255  # z = 1 after [0, 255] -> [-1, 1]; x = y = 128 -> 1/255
        normals[..., 0] = normals[..., 1] = 128
        Image.fromarray(normals).save(root / "normals" / f"{image_id}.png")
        edge = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        edge[:, WIDTH // 2] = 255
        Image.fromarray(edge).save(root / "edge" / f"{image_id}.png")
    return root


@pytest.fixture
def nyud(tmp_path) -> Path:
    return write_nyud(tmp_path / "NYUDv2")


def nyud_config(root: Path, *overrides: str):
    return load_config(
        None,
        [
            f"data={{name: nyud, root: {root}}}",
            "clients.count=2",
            "clients.tasks=[[semseg, depth, normals, edge], [depth]]",
            "model.encoder={name: resnet, width: 4, stem: small}",
            *overrides,
        ],
    )


def test_every_label_is_read_in_the_papers_encoding(nyud):
    cfg = nyud_config(nyud)
    data = cfg.data.client_data(0, client_plan(cfg.clients, cfg.data, 0, 0))
    train = data.train
    assert train["semseg"].x.shape == (3, 3 * HEIGHT * WIDTH)  # 6 train images over 2 clients
    image_id = None
    for k in range(6):  # which image is first: its pixels are 10 k / 255
        if math.isclose(float(train["semseg"].x[0, 0]), 10 * k / 255, abs_tol=1e-6):
            image_id = f"{k:04d}"
    raw = np.asarray(Image.open(nyud / "segmentation" / f"{image_id}.png")).astype(np.int64)
    expected = np.where(raw == 0, IGNORE_INDEX, raw - 1)
    assert np.array_equal(train["semseg"].y[0].numpy(), expected)
    assert np.allclose(train["depth"].y[0].numpy(), np.load(nyud / "depth" / f"{image_id}.npy"))
    assert train["normals"].y.shape == (3, 3, HEIGHT, WIDTH)
    expected_normal = torch.tensor([2 * 128 / 255 - 1, 2 * 128 / 255 - 1, 1.0])
    assert torch.allclose(train["normals"].y[0, :, 0, 0], expected_normal, atol=1e-6)
    assert train["edge"].y[0].sum() == HEIGHT and train["edge"].y.dtype == torch.long
    assert cfg.data.task_specs()[0].num_classes == 40


def test_clients_get_disjoint_shares_of_each_list(nyud):
    cfg = nyud_config(nyud)
    firsts = []
    for client in (0, 1):
        data = cfg.data.client_data(0, client_plan(cfg.clients, cfg.data, 0, client))
        firsts.append({round(float(v) * 255 / 10) for v in data.train["depth"].x[:, 0]})
        assert len(data.eval["depth"]) in (1, 2)
    assert firsts[0].isdisjoint(firsts[1]) and firsts[0] | firsts[1] == set(range(6))


def test_images_and_labels_are_resized(nyud):
    cfg = nyud_config(nyud, "data.image_size=[4, 5]")
    assert cfg.data.image_shape() == (3, 4, 5)
    data = cfg.data.client_data(0, client_plan(cfg.clients, cfg.data, 0, 0))
    assert data.train["semseg"].x.shape[1] == 60 and data.train["semseg"].y.shape[1:] == (4, 5)
    assert data.train["normals"].y.shape[1:] == (3, 4, 5)


def test_a_federation_trains_on_the_files(nyud, tmp_path):
    run_dir = run_in_process(
        tmp_path,
        "run",
        f"data={{name: nyud, root: {nyud}}}",
        "clients.count=2",
        "clients.tasks=[[semseg, depth, normals, edge], [depth]]",
        "client.local_steps=1",
        "client.batch_size=2",
        "model.encoder={name: resnet, width: 4, stem: small}",
        "model.head_hidden=[]",
        "rounds=1",
        nodes=2,
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = {(r["client"], r["task"]) for r in rows if r["split"] == "eval" and r["round"] == 1}
    assert final == {(0, "semseg"), (0, "depth"), (0, "normals"), (0, "edge"), (1, "depth")}


def test_a_broken_layout_is_refused_naming_the_root(nyud, tmp_path):
    with pytest.raises(ConfigError) as raised:
        nyud_config(tmp_path / "nowhere")
    assert raised.value.path == "data.root" and "no such folder" in str(raised.value)
    depth = nyud / "depth" / "0000.npy"
    kept = depth.read_bytes()
    depth.unlink()
    with pytest.raises(ConfigError) as raised:
        nyud_config(nyud)
    assert raised.value.path == "data.root" and "depth/0000.npy" in str(raised.value)
    depth.write_bytes(kept)
    (nyud / "gt_sets" / "val.txt").unlink()
    with pytest.raises(ConfigError) as raised:
        nyud_config(nyud)
    assert raised.value.path == "data.root" and "val.txt" in str(raised.value)


def test_a_client_without_evaluation_images_gets_empty_targets_of_the_right_shape(nyud):
    cfg = nyud_config(nyud, "clients.count=4", "clients.tasks=[[normals], [normals], [normals], [normals]]")
    data = cfg.data.client_data(0, client_plan(cfg.clients, cfg.data, 0, 3))  # 3 val images, 4 clients
    assert len(data.eval["normals"]) == 0 and data.eval["normals"].y.shape == (0, 3, HEIGHT, WIDTH)
