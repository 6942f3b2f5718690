"""The MultiMNIST suite: two scikit-learn digits overlaid on one canvas, a task per digit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedmtl.config.loading import build_config, load_config
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.data.partition import client_plan
from fedmtl.data.suites import SUITES, MultiMNISTSuite
from fedmtl.data.suites.digits import load_digit_images
from fedmtl.data.suites.multimnist import Pairs
from fedmtl.local.client import LocalClient
from fedmtl.local.data import client_data, participant_data
from fedmtl.model.networks import initial_shared_state
from tests.helpers import assert_no_leftover_processes, set_args, simulate

ALL_TASKS = "data.tasks=[left, right, left_parity, left_geq5, left_loops]"


def multimnist_config(*overrides: str):
    return load_config(None, ["data.name=multimnist", "clients.count=4", *overrides])


def every_client(cfg) -> list:
    return [
        cfg.data.client_data(cfg.seed, client_plan(cfg.clients, cfg.data, cfg.seed, c))
        for c in range(cfg.clients.count)
    ]


def placed(image: np.ndarray, row: int, col: int, canvas: int) -> np.ndarray:
    """An 8x8 image (64 values) on an empty canvas with its top-left corner at (row, col)."""
    out = np.zeros((canvas, canvas), dtype=np.float32)
    out[row : row + 8, col : col + 8] = image.reshape(8, 8)
    return out


def test_registered_and_shapes():
    assert SUITES["multimnist"] is MultiMNISTSuite
    suite = MultiMNISTSuite(canvas=14, max_shift=2)
    assert suite.image_shape() == (1, 14, 14) and suite.feature_dim() == 196
    assert suite.task_names() == ("left", "right")
    cfg = multimnist_config(ALL_TASKS, "clients.tasks_per_client=5")
    assert [(s.name, s.num_classes) for s in cfg.data.task_specs()] == [
        ("left", 10), ("right", 10), ("left_parity", 2), ("left_geq5", 2), ("left_loops", 2),
    ]  # fmt: skip
    data = every_client(cfg)[0]
    for split in (data.train, data.eval):
        for task in split.values():
            assert task.x.shape == (len(task), 144) and task.x.dtype == torch.float32
            assert task.y.dtype == torch.long and 0.0 <= float(task.x.min()) and float(task.x.max()) <= 1.0


def test_same_seed_same_data_other_seed_other_data():
    first, again = every_client(multimnist_config()), every_client(multimnist_config())
    other = every_client(multimnist_config("seed=1"))
    for a, b, c in zip(first, again, other):
        assert torch.equal(a.train["left"].x, b.train["left"].x) and torch.equal(a.eval["right"].y, b.eval["right"].y)
        assert a.train["left"].x.shape != c.train["left"].x.shape or not torch.equal(
            a.train["left"].x, c.train["left"].x
        )


@pytest.mark.parametrize("shift", [0, 1])
def test_examples_are_the_two_source_digits_placed_and_max_combined(shift):
    cfg = multimnist_config(ALL_TASKS, "clients.tasks_per_client=5", f"data.max_shift={shift}")
    images, digits = load_digit_images()
    for client in range(cfg.clients.count):
        data = cfg.data.client_data(cfg.seed, client_plan(cfg.clients, cfg.data, cfg.seed, client))
        train, evaluation = cfg.data.client_pairs(cfg.seed, client, cfg.clients.count)
        for split, pairs in ((data.train, train), (data.eval, evaluation)):
            assert np.all(pairs.left != pairs.right), "the two digits are different source images"
            assert np.all((0 <= pairs.left_at) & (pairs.left_at <= shift))
            assert np.all((4 - shift <= pairs.right_at) & (pairs.right_at <= 4))
            if shift == 0:
                assert np.all(pairs.left_at == 0) and np.all(pairs.right_at == 4)
            expected = [
                np.maximum(placed(images[lft], *lat, 12), placed(images[rgt], *rat, 12)).ravel()
                for lft, rgt, lat, rat in zip(pairs.left, pairs.right, pairs.left_at, pairs.right_at)
            ]
            assert np.array_equal(split["left"].x.numpy(), np.reshape(expected, (len(pairs), 144)))
            left, right = torch.from_numpy(digits[pairs.left]), torch.from_numpy(digits[pairs.right])
            assert torch.equal(split["left"].y, left) and torch.equal(split["right"].y, right)
            assert torch.equal(split["left_parity"].y, left % 2)
            assert torch.equal(split["left_geq5"].y, (left >= 5).long())
            assert torch.equal(split["left_loops"].y, torch.isin(left, torch.tensor([0, 6, 8, 9])).long())


def test_no_source_image_is_shared_between_clients_or_between_train_and_eval():
    cfg = multimnist_config("data.pairs_per_image=3")
    seen: set[int] = set()
    for client in range(cfg.clients.count):
        train, evaluation = cfg.data.client_pairs(cfg.seed, client, cfg.clients.count)
        train_sources = set(train.left) | set(train.right)
        eval_sources = set(evaluation.left) | set(evaluation.right)
        assert len(train) == 3 * len(set(train.left)) and len(evaluation) == len(set(evaluation.left))
        assert len(evaluation) > 0 and not train_sources & eval_sources
        assert not (train_sources | eval_sources) & seen
        seen |= train_sources | eval_sources


def test_small_alpha_skews_the_left_digit_per_client():
    digits = load_digit_images()[1]

    def top_share(alpha: float) -> float:
        """Mean over clients of the share of a client's most common left digit."""
        cfg = multimnist_config("clients.count=6", f"data.dirichlet_alpha={alpha}")
        lefts = [cfg.data.client_pairs(cfg.seed, client, 6)[0].left for client in range(6)]
        return float(
            np.mean([np.bincount(digits[left], minlength=10).max() / len(left) for left in lefts if len(left)])
        )

    assert top_share(0.1) > 2 * top_share(1000.0)


def test_a_task_keeps_its_data_whichever_other_tasks_are_trained_and_scale_subsamples():
    held = "clients.tasks=[[left, right], [left], [right], [right, left]]"
    full = multimnist_config(held)
    only = multimnist_config(held, "clients.only_tasks=[left]", "clients.members=[0, 1, 3]")
    for participant in only.participants():
        (client,) = participant.clients
        a, b = client_data(full, client), participant_data(only, participant)
        assert list(b.train) == ["left"] and [c for c, _ in b.evals] == [client]
        assert torch.equal(a.train["left"].x, b.train["left"].x) and torch.equal(
            a.eval["left"].y, b.evals[0][1]["left"].y
        )
        assert set(client_data(only, client).train) == set(a.train)  # a client's data: every task it holds
    scaled = multimnist_config("clients.tasks_per_client=2", "clients.task_sample_scale={right: 0.25}")
    train = client_data(scaled, 0).train
    assert len(train["right"]) == pytest.approx(len(train["left"]) * 0.25, abs=1)
    assert torch.equal(train["right"].x, train["left"].x[: len(train["right"])])


def test_config_parses_and_bad_settings_name_their_key():
    raw = {"data": {"name": "multimnist", "tasks": ["left", "right", "left_loops"], "canvas": 14, "max_shift": 2}}
    cfg = build_config({**raw, "clients": {"count": 3, "tasks_per_client": 2}, "model": {"encoder": "cnn"}})
    assert cfg.data == MultiMNISTSuite(tasks=("left", "right", "left_loops"), canvas=14, max_shift=2)
    assert "max_shift=2" in repr(cfg.data)
    for override, fragment in [
        ("data.tasks=[left, nope]", "data.tasks"),
        ("data.canvas=10", "data"),  # no room for a shift of 1 either side
        ("data.pairs_per_image=0", "data"),
    ]:
        with pytest.raises(ConfigError) as caught:
            multimnist_config(override)
        assert caught.value.path.startswith(fragment), caught.value


def test_tiny_pools_give_no_pairs_rather_than_pairing_an_image_with_itself():
    suite = MultiMNISTSuite()
    pairs = suite._pair_pool(np.array([5]), 2, np.random.default_rng(0))
    assert isinstance(pairs, Pairs) and len(pairs) == 0
    two = suite._pair_pool(np.array([5, 9]), 2, np.random.default_rng(0))
    assert sorted(zip(two.left.tolist(), two.right.tolist())) == [(5, 9), (5, 9), (9, 5), (9, 5)]


def test_a_cnn_client_trains_and_evaluates_on_both_digits():
    cfg = multimnist_config(
        "clients.tasks_per_client=2", "model.encoder=cnn", "model.conv_channels=[4, 8]", "client.local_steps=3"
    )
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
    client = LocalClient.for_client(cfg, 0)
    outcome = client.train(shared, None, 1)
    assert outcome.shared.keys() == shared.keys()
    metrics = protocol.unflatten_task_metrics(client.evaluate(outcome.shared, outcome.private)[0], protocol.EVAL)
    assert set(metrics) == {"left", "right"} and all(0 <= m["accuracy"] <= 1 for m in metrics.values())


@pytest.mark.slow
def test_a_two_round_simulation(tmp_path, simulate_env):
    run_dir = tmp_path / "run"
    overrides = [
        "data.name=multimnist",
        "clients.count=3",
        "clients.tasks=[[left], [right], [left, right]]",
        "model.encoder=cnn",
        "model.conv_channels=[4, 8]",
        "model.representation_dim=8",
        "client.local_steps=2",
        "rounds=2",
        f"output.run_dir={run_dir}",
    ]
    result = simulate(*set_args(overrides), env=simulate_env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_rows(run_dir / "metrics.jsonl")
    final = {(r["client"], r["task"]) for r in rows if r["split"] == "eval" and r["round"] == 2}
    assert final == {(0, "left"), (1, "right"), (2, "left"), (2, "right")}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {t["task"] for t in summary["tasks"]} == {"left", "right"}
    assert_no_leftover_processes(simulate_env)
