"""The synthetic dense suite: reproducible scenes whose four label maps agree with one another, the
relatedness knob doing what it says, and clients that differ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.data.suites import ClientPlan, ShapesSuite
from fedmtl.data.suites.shapes import DEPTH_OFFSET

TASKS = ("segmentation", "depth", "normals", "edges")


def plan(client: int = 0, train=(24, 24, 24, 12), evaluation=(8, 8, 8, 8), clients: int = 4) -> ClientPlan:
    return ClientPlan(client, clients, TASKS, tuple(train), tuple(evaluation))


def test_targets_have_the_dense_shapes_and_dtypes_and_are_reproducible():
    suite = ShapesSuite(canvas=16)
    data = suite.client_data(3, plan())
    again = suite.client_data(3, plan())
    assert data.train["segmentation"].y.shape == (24, 16, 16) and data.train["segmentation"].y.dtype == torch.long
    assert data.train["depth"].y.shape == (24, 16, 16) and data.train["depth"].y.dtype == torch.float32
    assert data.train["normals"].y.shape == (24, 3, 16, 16)
    assert data.train["edges"].y.shape == (12, 16, 16) and set(data.train["edges"].y.unique().tolist()) == {0, 1}
    assert data.train["depth"].x.shape == (24, 3 * 16 * 16)
    for task in TASKS:
        assert torch.equal(data.train[task].x, again.train[task].x)
        assert torch.equal(data.train[task].y, again.train[task].y)
    assert set(data.train["segmentation"].y.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.allclose(data.train["normals"].y.norm(dim=1), torch.ones(24, 16, 16), atol=1e-5)
    assert bool((data.train["depth"].y > 0).all())


def test_a_clients_tasks_label_the_same_images_and_a_smaller_task_takes_the_first():
    data = ShapesSuite(canvas=16).client_data(0, plan())
    assert torch.equal(data.train["segmentation"].x, data.train["depth"].x)
    assert torch.equal(data.train["edges"].x, data.train["segmentation"].x[:12])
    assert not torch.equal(data.eval["segmentation"].x, data.train["segmentation"].x[:8])


def test_edges_are_where_a_four_neighbour_has_another_label():
    data = ShapesSuite(canvas=16).client_data(1, plan())
    labels, edges = data.train["segmentation"].y[0].numpy(), data.train["edges"].y[0].numpy()
    by_hand = np.zeros_like(edges)
    for r in range(16):
        for c in range(16):
            neighbours = [(r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))]
            by_hand[r, c] = any(
                0 <= rr < 16 and 0 <= cc < 16 and labels[rr, cc] != labels[r, c] for rr, cc in neighbours
            )
    assert np.array_equal(edges, by_hand) and edges.sum() > 0


def shape_depth_correlation(relatedness: float) -> float:
    data = ShapesSuite(canvas=16, relatedness=relatedness).client_data(0, plan(train=(64, 64, 64, 64)))
    on_shape = (data.train["segmentation"].y > 0).double().flatten()
    return float(np.corrcoef(on_shape.numpy(), data.train["depth"].y.double().flatten().numpy())[0, 1])


def test_relatedness_ties_depth_to_the_shapes_at_one_and_unties_it_at_zero():
    related = ShapesSuite(canvas=16, relatedness=1.0).client_data(0, plan())
    background = related.train["segmentation"].y == 0
    assert torch.allclose(related.train["depth"].y[background], torch.tensor(DEPTH_OFFSET))  # flat floor
    assert shape_depth_correlation(1.0) < -0.5  # shapes rise towards the camera
    assert abs(shape_depth_correlation(0.0)) < 0.1
    unrelated = ShapesSuite(canvas=16, relatedness=0.0).client_data(0, plan())
    assert torch.equal(unrelated.train["segmentation"].y, related.train["segmentation"].y)  # labels unchanged


def test_clients_differ_in_their_mix_of_shapes_and_colours():
    suite = ShapesSuite(canvas=16, dirichlet_alpha=0.05)
    mixes = []
    for client in range(4):
        labels = suite.client_data(0, plan(client, train=(64, 64, 64, 64))).train["segmentation"].y
        counts = torch.bincount(labels.flatten(), minlength=4)[1:].double()
        mixes.append(counts / counts.sum())
    assert max(float(m.max()) for m in mixes) > 0.8  # a skewed client is mostly one shape
    assert len({int(m.argmax()) for m in mixes}) > 1
    a, b = (suite.client_data(0, plan(c)).train["depth"].x for c in (0, 1))
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("data={name: shapes, relatedness: 1.5}", "data.relatedness"),
        ("data={name: shapes, canvas: 4}", "data.canvas"),
        ("data={name: shapes, classes: 4}", "data.classes"),
        ("data={name: shapes, tasks: [depth, depth]}", "data.tasks"),
    ],
)
def test_bad_settings_name_their_key(setting, key):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [setting, "model.encoder={name: resnet}"])
    assert raised.value.path == key


@pytest.mark.parametrize("encoder", ["mlp", "cnn"])
def test_per_pixel_tasks_need_an_encoder_that_keeps_a_feature_map(encoder):
    with pytest.raises(ConfigError) as raised:
        load_config(None, ["data={name: shapes}", f"model.encoder={encoder}"])
    assert raised.value.path == "model.encoder" and "feature map" in str(raised.value)
