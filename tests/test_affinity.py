"""TAG's lookahead task affinity on a client (``fedmtl/local/affinity.py``): the formula against an
independent functional computation, its sign on tasks that agree or conflict by construction, and
that probing leaves training exactly as it was."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import functional_call

from fedmtl.core.files import read_rows
from fedmtl.data.suites import TaskData
from fedmtl.local.affinity import lookahead_affinity
from fedmtl.local.data import client_data
from fedmtl.local.training import train_local
from fedmtl.methods.balancing import Static
from fedmtl.model.networks import MultiTaskModel
from tests.helpers import tiny_overrides
from tests.loopback import run_in_process

LR = 0.05


def setup(tiny_config, second_targets):
    """Client 0's first task, and a second task on the same inputs and head with targets ``second_targets(y)``."""
    cfg = tiny_config
    data = client_data(cfg, 0).train
    specs = {s.name: s for s in cfg.data.task_specs() if s.name in data}
    torch.manual_seed(0)
    model = MultiTaskModel(cfg.model, cfg.data.feature_dim(), specs.values())
    first, second = sorted(data)
    data = {first: data[first], second: TaskData(data[first].x, second_targets(data[first].y))}
    model.heads[second].load_state_dict(model.heads[first].state_dict())
    return cfg, data, specs, model


def batches_of(data):
    return {task: (d.x[:16], d.y[:16]) for task, d in data.items()}


def probe(model, data, specs):
    batches = batches_of(data)
    losses = {t: specs[t].kind_impl.loss(model(x, t), y) for t, (x, y) in batches.items()}
    return lookahead_affinity(model, batches, specs, model.encoder_parameters(), LR, losses)


def reference_affinity(model, data, specs):
    """``1 - L_j(theta - lr grad L_i) / L_j(theta)`` with ``torch.func.functional_call`` on copies of the
    parameters (the model itself is never modified)."""
    batches = batches_of(data)
    params = dict(model.named_parameters())
    encoder = {name for name, p in params.items() if any(p is q for q in model.encoder_parameters())}

    def loss(task, values):
        x, y = batches[task]
        return specs[task].kind_impl.loss(functional_call(model, values, (x, task)), y)

    expected = {}
    for i in batches:
        grads = torch.autograd.grad(loss(i, params), [params[n] for n in sorted(encoder)])
        moved = {**params, **{n: params[n] - LR * g for n, g in zip(sorted(encoder), grads)}}
        for j in batches:
            expected[(i, j)] = float(1 - loss(j, moved).detach() / loss(j, params).detach())
    return expected


def test_affinity_matches_an_independent_functional_computation(tiny_config):
    cfg, data, specs, model = setup(tiny_config, lambda y: 0.5 * y + 0.1)
    assert probe(model, data, specs) == pytest.approx(reference_affinity(model, data, specs), rel=1e-5, abs=1e-7)


def test_conflicting_tasks_have_negative_affinity_and_identical_ones_their_own(tiny_config):
    cfg, data, specs, model = setup(tiny_config, lambda y: -y)
    a, b = sorted(data)
    z = probe(model, data, specs)
    assert z[(a, a)] > 0 and z[(b, b)] > 0  # a step on a task lowers its own loss
    assert z[(a, b)] < 0 and z[(b, a)] < 0  # and raises the negated task's
    cfg, data, specs, model = setup(tiny_config, lambda y: y.clone())
    z = probe(model, data, specs)
    assert z[(a, b)] == pytest.approx(z[(a, a)]) and z[(a, b)] > 0


def test_probing_leaves_training_unchanged(tiny_config):
    results = []
    for every in (0, 1):
        cfg, data, specs, model = setup(tiny_config, lambda y: -y)
        client = dataclasses.replace(cfg.client, affinity_every=every, local_steps=4)
        stats = train_local(
            model, data, specs, client, torch.Generator().manual_seed(1), Static().start(list(data), {})
        )
        results.append((stats, torch.cat([p.detach().reshape(-1) for p in model.parameters()])))
    (off, plain), (on, probed) = results
    assert torch.equal(plain, probed) and off.task_loss == on.task_loss
    assert off.task_affinity == {} and len(on.task_affinity) == 4  # ordered pairs of two tasks, self-pairs included


def test_a_run_records_affinity_per_client_and_per_round(tmp_path):
    run_dir = run_in_process(tmp_path, "run", *tiny_overrides(3), "rounds=2", "client.affinity_every=1")
    server = read_rows(run_dir / "server.jsonl")
    clients = read_rows(run_dir / "clients.jsonl")
    for row in server:
        pairs = {(p["from"], p["to"]) for p in row["task_affinity"]}
        assert ("anchor", "aligned") in pairs and ("aligned", "aligned") in pairs
    first = [r for r in clients if r["round"] == 1]
    assert all(len(r["task_affinity"]) == 4 for r in first)  # each client holds two tasks
    # the server's row is the mean over the clients that measured each pair
    pair = ("aligned", "aligned")  # held by clients 0 and 1
    values = [p["affinity"] for r in first for p in r["task_affinity"] if (p["from"], p["to"]) == pair]
    (mean,) = [p["affinity"] for p in server[0]["task_affinity"] if (p["from"], p["to"]) == pair]
    assert len(values) == 2 and mean == pytest.approx(sum(values) / 2)
