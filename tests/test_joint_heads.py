"""Joint heads (``model.joint_heads``): multi-label classification, one head over the label sets of the
same examples. The grouped tasks read slices of one network, train on the same batch, and one local step
is one SGD step on the sum of their losses, worked out here by hand; refusals name their key."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.data.suites import TaskData
from fedmtl.local.data import client_data
from fedmtl.local.training import batch_indices, task_batches, train_local
from fedmtl.model.networks import JointSlice, MultiTaskModel
from tests.helpers import IN_PROCESS
from tests.loopback import run_in_process

DIGITS = ("data.name=digits", "clients.count=2", "clients.tasks_per_client=4", "model.head_hidden=[8]")
JOINT = "model.joint_heads=[[digit, parity, geq5]]"


def model_for(cfg, tasks) -> MultiTaskModel:
    specs = {s.name: s for s in cfg.data.task_specs()}
    torch.manual_seed(0)
    return MultiTaskModel(cfg.model, cfg.data.feature_dim(), [specs[t] for t in tasks])


def test_grouped_tasks_read_slices_of_one_head_and_the_others_keep_their_own():
    cfg = load_config(None, [*DIGITS, JOINT])
    model = model_for(cfg, ("digit", "parity", "geq5", "loops"))
    joint = {name: head for name, head in model.heads.items() if isinstance(head, JointSlice)}
    assert sorted(joint) == ["digit", "geq5", "parity"] and not isinstance(model.heads["loops"], JointSlice)
    network = joint["digit"].joint
    assert all(head.joint is network for head in joint.values())
    assert model.joint_groups == (("digit", "parity", "geq5"),)
    h = torch.randn(5, cfg.model.representation_dim)
    out = network(h)
    assert out.shape == (5, 10 + 2 + 2)  # the classes of the group's tasks, in the group's order
    for task, (start, stop) in {"digit": (0, 10), "parity": (10, 12), "geq5": (12, 14)}.items():
        assert torch.equal(model.heads[task](h), out[:, start:stop])
    # one hidden layer of 8 shared by three tasks, against one each
    separate = model_for(load_config(None, list(DIGITS)), ("digit", "parity", "geq5", "loops"))
    counts = [sum(p.numel() for p in m.heads.parameters()) for m in (separate, model)]
    assert counts[0] - counts[1] == 2 * (cfg.model.representation_dim * 8 + 8)  # two hidden layers fewer
    # a participant holding one task of the group has that task's own head
    alone = model_for(cfg, ("digit", "loops"))
    assert not any(isinstance(head, JointSlice) for head in alone.heads.values()) and alone.joint_groups == ()


def test_grouped_tasks_of_equal_size_draw_the_same_batches():
    cfg = load_config(None, [*DIGITS, JOINT, "client.batch_size=7"])
    data = client_data(cfg, 0).train
    _, batches, _ = task_batches(data, cfg.client, torch.Generator().manual_seed(3), [("digit", "parity", "geq5")])
    drawn = {task: [next(batches[task]) for _ in range(5)] for task in ("loops", "geq5", "digit", "parity")}
    for a, b in itertools.combinations(("digit", "parity", "geq5"), 2):
        assert all(torch.equal(x, y) for x, y in zip(drawn[a], drawn[b]))
    assert not all(torch.equal(x, y) for x, y in zip(drawn["loops"], drawn["digit"]))
    shorter = {**data, "parity": TaskData(data["parity"].x[:-3], data["parity"].y[:-3])}
    _, batches, _ = task_batches(shorter, cfg.client, torch.Generator().manual_seed(3), [("digit", "parity")])
    assert not all(torch.equal(next(batches["digit"]), next(batches["parity"])) for _ in range(5))


def test_one_local_step_is_one_sgd_step_on_the_summed_losses_of_the_same_examples():
    cfg = load_config(
        None, [*DIGITS, "model.joint_heads=[[digit, parity]]", "client.local_steps=1", "client.batch_size=16"]
    )
    specs = {s.name: s for s in cfg.data.task_specs() if s.name in ("digit", "parity")}
    data = {t: d for t, d in client_data(cfg, 0).train.items() if t in specs}
    model = model_for(cfg, ("digit", "parity"))
    by_hand = copy.deepcopy(model)
    balancer = cfg.client.balancing.start(list(specs), {})
    train_local(model, data, specs, cfg.client, torch.Generator().manual_seed(11), balancer)
    index = next(batch_indices(len(data["digit"]), 16, torch.Generator().manual_seed(11)))
    loss = sum(F.cross_entropy(by_hand(data[t].x[index], t), data[t].y[index]) for t in specs)
    grads = torch.autograd.grad(loss, list(by_hand.parameters()))
    with torch.no_grad():
        for p, g in zip(by_hand.parameters(), grads):
            p -= cfg.client.lr * g  # SGD's first step: momentum has nothing to add yet
    for (name, trained), expected in zip(model.named_parameters(), by_hand.parameters()):
        assert torch.allclose(trained, expected, atol=1e-6), name


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (["model.joint_heads=[[digit]]"], "model.joint_heads[0]", "two tasks or more"),
        (["model.joint_heads=[[digit, parity], [parity, geq5]]"], "model.joint_heads", "one joint head only"),
        (["model.joint_heads=[[digit, nope]]"], "model.joint_heads[0][1]", "unknown task 'nope'"),
        ([JOINT, "server.federate_heads=true"], "server.federate_heads", "a joint head stays private"),
        ([JOINT, "model.head_init=task"], "model.head_init", "no per-task round-0 head"),
    ],
)
def test_bad_joint_heads_are_refused_with_their_key(overrides, key, message):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [*DIGITS, *overrides])
    assert raised.value.path == key and message in str(raised.value)


def test_joint_heads_need_classification_tasks_that_share_their_examples():
    tasks = "data.tasks=[{name: a, kind: classification}, {name: b, kind: classification}, {name: r}, {name: s}]"
    for group, key, message in (
        ("[[a, b]]", "model.joint_heads[0]", "the synthetic suite's tasks each have their own"),
        ("[[a, r]]", "model.joint_heads[0][1]", "r is a regression task"),
    ):
        with pytest.raises(ConfigError) as raised:
            load_config(None, [tasks, "clients.tasks_per_client=3", f"model.joint_heads={group}"])
        assert raised.value.path == key and message in str(raised.value)


def test_a_federation_with_a_joint_head_trains_and_reports_every_task(tmp_path):
    overrides = (*DIGITS, JOINT, "rounds=2", "eval_every=1", "client.local_steps=3", IN_PROCESS)
    run_dir = run_in_process(tmp_path, "joint", *overrides, nodes=2)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = {(r["client"], r["task"]): r for r in rows if r["split"] == "eval" and r["round"] == 2}
    assert set(final) == {(c, t) for c in range(2) for t in ("digit", "parity", "geq5", "loops")}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in final.values())
