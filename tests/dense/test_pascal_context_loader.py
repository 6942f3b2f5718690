"""PASCAL-Context from local files in FedHCA²'s layout, on a tiny fixture the test writes: every label's
encoding (the normals' class mask, edges from the context labels, the second semseg folder), and
FedHCA²'s hetero-client setting in miniature: PASCAL-Context single-task clients beside NYUD-v2
multi-task clients in one federation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.data.dense_kinds import IGNORE_INDEX
from fedmtl.data.partition import client_plan
from tests.dense.test_nyud_loader import write_nyud
from tests.loopback import run_in_process

HEIGHT, WIDTH = 16, 16
CONTEXT = {"wall": 5, "floor": 9, "tvmonitor": 30, "sky": 40}  # sky has no normals in NYUD's classes
NYU = ["unknown", "wall", "floor", "bed"]


def write_pascal(root: Path, train: int = 4, val: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for folder in ("ImageSets/Context", "JPEGImages", "semseg/VOC12", "semseg/pascal-context", "sal_distill",
                   "normals_distill", "pascal-context/trainval", "json"):  # fmt: skip
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"2008_{k:06d}" for k in range(train + val)]
    (root / "ImageSets/Context/train.txt").write_text("\n".join(ids[:train]) + "\n")
    (root / "ImageSets/Context/val.txt").write_text("\n".join(ids[train:]) + "\n")
    (root / "json/nyu_classes.json").write_text(json.dumps(NYU))
    (root / "json/context_classes.json").write_text(json.dumps(CONTEXT))
    for k, image_id in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3)).astype(np.uint8)).save(
            root / f"JPEGImages/{image_id}.jpg"
        )
        semseg = rng.integers(0, 21, (HEIGHT, WIDTH)).astype(np.uint8)
        semseg[0, 0] = 255
        folder = "VOC12" if k % 2 == 0 else "pascal-context"  # the loader looks in VOC12 first
        Image.fromarray(semseg).save(root / f"semseg/{folder}/{image_id}.png")
        Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH)).astype(np.uint8)).save(
            root / f"sal_distill/{image_id}.png"
        )
        normals = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        normals[..., 2] = 255
        Image.fromarray(normals).save(root / f"normals_distill/{image_id}.png")
        labels = np.full((HEIGHT, WIDTH), CONTEXT["wall"], dtype=np.int64)
        labels[:, WIDTH // 2 :] = CONTEXT["sky"]  # the right half: no normals
        labels[HEIGHT // 2 :, : WIDTH // 4] = CONTEXT["tvmonitor"]
        scipy.io.savemat(root / f"pascal-context/trainval/{image_id}.mat", {"LabelMap": labels})
    return root


@pytest.fixture
def pascal(tmp_path) -> Path:
    return write_pascal(tmp_path / "PASCALContext")


def pascal_config(root: Path, *overrides: str):
    return load_config(
        None,
        [f"data={{name: pascal_context, root: {root}}}", "clients.count=2", "clients.tasks_per_client=4",
         "model.encoder={name: resnet, width: 4, stem: small}", *overrides],
    )  # fmt: skip


def test_every_label_is_read_in_the_papers_encoding(pascal):
    cfg = pascal_config(pascal)
    assert [(s.name, s.kind, s.num_classes) for s in cfg.data.task_specs()] == [
        ("semseg", "segmentation", 21), ("sal", "binary_mask", 1), ("normals", "normals", 1), ("edge", "binary_mask", 1)
    ]  # fmt: skip
    suite = cfg.data
    for image_id in ("2008_000000", "2008_000001"):  # one semseg in VOC12, the other in pascal-context
        semseg = suite.to_target("semseg", suite.decode("semseg", image_id)[None])[0]
        assert semseg[0, 0] == IGNORE_INDEX and semseg.dtype == torch.long
    sal_raw = np.asarray(Image.open(pascal / "sal_distill/2008_000000.png"))
    assert torch.equal(
        suite.to_target("sal", suite.decode("sal", "2008_000000")[None])[0],
        torch.from_numpy((sal_raw > 127.5).astype(np.int64)),
    )
    normals = suite.to_target("normals", suite.decode("normals", "2008_000000")[None])[0]
    assert torch.allclose(normals[:, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))  # wall: the file's vector
    assert torch.equal(normals[:, 0, -1], torch.zeros(3))  # sky: masked out
    assert torch.allclose(normals[:, -1, 0], torch.tensor([-1.0, -1.0, 1.0]))  # tvmonitor is added to the valid classes
    edge = suite.to_target("edge", suite.decode("edge", "2008_000000")[None])[0]
    assert edge[0, WIDTH // 2 - 1] == 1 and edge[0, WIDTH // 2] == 1 and edge[0, 0] == 0 and edge[0, -1] == 0


def test_clients_deal_the_lists_and_train_on_all_four_tasks(pascal):
    cfg = pascal_config(pascal, "data.image_size=[8, 8]")
    data = cfg.data.client_data(0, client_plan(cfg.clients, cfg.data, 0, 0))
    assert set(data.train) == {"semseg", "sal", "normals", "edge"}
    assert data.train["semseg"].x.shape == (2, 3 * 8 * 8) and data.train["normals"].y.shape == (2, 3, 8, 8)
    assert len(data.eval["edge"]) == 2


def test_a_missing_context_label_file_is_refused_naming_the_root(pascal):
    (pascal / "pascal-context/trainval/2008_000000.mat").unlink()
    with pytest.raises(ConfigError) as raised:
        pascal_config(pascal)
    assert raised.value.path == "data.root" and "2008_000000.mat" in str(raised.value)


def test_fedhca2s_setting_pascal_single_task_clients_beside_nyud_multi_task_clients(tmp_path):
    pascal, nyud = write_pascal(tmp_path / "PASCALContext"), write_nyud(tmp_path / "NYUDv2")
    data = (
        "data={name: composite, parts: ["
        f"{{suite: {{name: pascal_context, root: {pascal}, image_size: [16, 16]}}, clients: 4, prefix: pascal_}}, "
        f"{{suite: {{name: nyud, root: {nyud}, image_size: [16, 16]}}, clients: 1, prefix: nyud_}}]}}"
    )
    run_dir = run_in_process(
        tmp_path,
        "run",
        data,
        "clients.count=5",
        "clients.tasks=[[pascal_semseg], [pascal_sal], [pascal_normals], [pascal_edge], [nyud_semseg, nyud_depth, nyud_normals, nyud_edge]]",
        "client.local_steps=1",
        "client.batch_size=2",
        "model.encoder={name: resnet, width: 4, stem: small}",
        "model.head_hidden=[]",
        "rounds=1",
        nodes=5,
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = {(r["client"], r["task"]) for r in rows if r["split"] == "eval" and r["round"] == 1}
    assert not [line for line in (run_dir / "server.jsonl").read_text().splitlines() if '"failures": 0' not in line]
    assert evaluated == {(0, "pascal_semseg"), (1, "pascal_sal"), (2, "pascal_normals"), (3, "pascal_edge"),
                         (4, "nyud_semseg"), (4, "nyud_depth"), (4, "nyud_normals"), (4, "nyud_edge")}  # fmt: skip
