"""Several datasets in one federation (FedHCA²'s hetero-client setting): each part serves its own clients
with its own split, task names carry the part's prefix, and clients that mix up their parts' tasks or
parts of different input sizes are refused with the key."""

from __future__ import annotations

import json

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.data.partition import client_plan
from fedmtl.data.suites import ClientPlan, ShapesSuite
from tests.dense.test_nyud_loader import write_nyud
from tests.loopback import run_in_process

RESNET = "model.encoder={name: resnet, width: 4, stem: small}"


def composite(nyud_root) -> str:
    return (
        "data={name: composite, parts: ["
        "{suite: {name: shapes, canvas: 16, tasks: [segmentation, edges]}, clients: 2, prefix: shapes_}, "
        f"{{suite: {{name: nyud, root: {nyud_root}, image_size: [16, 16]}}, clients: 2, prefix: nyud_}}]}}"
    )


CLIENT_TASKS = "clients.tasks=[[shapes_segmentation], [shapes_edges], [nyud_semseg, nyud_depth, nyud_normals, nyud_edge], [nyud_depth]]"


def test_each_part_serves_its_own_clients_with_its_own_split(tmp_path):
    root = write_nyud(tmp_path / "NYUDv2")
    cfg = load_config(None, [composite(root), "clients.count=4", CLIENT_TASKS, RESNET])
    names = cfg.data.task_names()
    assert names == ("shapes_segmentation", "shapes_edges", "nyud_semseg", "nyud_depth", "nyud_normals", "nyud_edge")
    data = cfg.data.client_data(0, client_plan(cfg.clients, cfg.data, 0, 3))
    assert list(data.train) == ["nyud_depth"]
    nyud = cfg.data.parts[1].suite
    alone = nyud.client_data(0, ClientPlan(1, 2, ("depth",), (1,), (1,)))  # client 3 is part 1's client 1 of 2
    assert torch.equal(data.train["nyud_depth"].x, alone.train["depth"].x)
    shapes = cfg.data.client_data(0, client_plan(cfg.clients, cfg.data, 0, 1))
    direct = ShapesSuite(canvas=16, tasks=("segmentation", "edges")).client_data(
        0, ClientPlan(1, 2, ("edges",), (len(shapes.train["shapes_edges"]),), (len(shapes.eval["shapes_edges"]),))
    )
    assert torch.equal(shapes.train["shapes_edges"].y, direct.train["edges"].y)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (
            ["clients.count=4", "clients.tasks=[[nyud_depth], [shapes_edges], [nyud_depth], [nyud_depth]]"],
            "clients.tasks[0]",
        ),
        (
            ["clients.count=4", "clients.tasks=[[shapes_edges], [shapes_edges], [shapes_edges], [nyud_depth]]"],
            "clients.tasks[2]",
        ),
        (["clients.count=3", "clients.tasks=[[shapes_edges], [shapes_edges], [nyud_depth]]"], "clients.count"),
    ],
)
def test_clients_and_tasks_must_match_the_parts(tmp_path, overrides, key):
    root = write_nyud(tmp_path / "NYUDv2")
    with pytest.raises(ConfigError) as raised:
        load_config(None, [composite(root), *overrides, RESNET])
    assert raised.value.path == key


def test_parts_of_different_input_sizes_are_refused(tmp_path):
    root = write_nyud(tmp_path / "NYUDv2")
    mixed = composite(root).replace("image_size: [16, 16]", "image_size: [16, 12]")
    with pytest.raises(ConfigError) as raised:
        load_config(None, [mixed, "clients.count=4", CLIENT_TASKS, RESNET])
    assert raised.value.path == "data.parts[1].suite" and "one encoder reads every part" in str(raised.value)


def test_a_federation_of_two_datasets_trains(tmp_path):
    root = write_nyud(tmp_path / "NYUDv2")
    run_dir = run_in_process(
        tmp_path,
        "run",
        composite(root),
        "clients.count=4",
        CLIENT_TASKS,
        "clients.samples_per_task=8",
        "clients.eval_samples_per_task=4",
        "client.local_steps=1",
        "client.batch_size=2",
        RESNET,
        "model.head_hidden=[]",
        "rounds=1",
        nodes=4,
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {(r["client"], r["task"]) for r in rows if r["split"] == "eval" and r["round"] == 1} == {
        (0, "shapes_segmentation"),
        (1, "shapes_edges"),
        (2, "nyud_semseg"),
        (2, "nyud_depth"),
        (2, "nyud_normals"),
        (2, "nyud_edge"),
        (3, "nyud_depth"),
    }
