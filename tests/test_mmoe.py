"""Multi-gate mixture of experts (model.sharing mmoe; Ma et al., KDD 2018): the forward pass against the
paper's formula, private gates on the wire, the gate diagnostics against hand values, the run files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.files import read_rows
from fedmtl.data.suites import TaskData
from fedmtl.local.client import LocalClient
from fedmtl.local.gates import gate_diagnostics
from fedmtl.model.networks import MultiTaskModel, initial_shared_state
from fedmtl.runfiles.gates import GateReading, final_readings, gates_table, overlap, per_task, task_overlaps
from tests.helpers import TINY_OVERRIDES, federate_in_process

MMOE = "model.sharing={name: mmoe, experts: 3}"


def config(*extra: str):
    return load_config(None, [*TINY_OVERRIDES, "model.encoder_hidden=[8, 6]", MMOE, *extra])


def model_of(cfg) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(cfg.model, cfg.data.feature_dim(), cfg.data.task_specs())


def test_each_task_sees_its_gates_mixture_of_the_experts():
    """h_t(x) = sum_e softmax(W_t x + b_t)_e f_e(x), then the task's head (the paper's equation 5-6)."""
    cfg = config()
    model = model_of(cfg)
    assert len(model.encoder) == 3 and set(model.gates) == {"anchor", "aligned", "orthogonal", "opposed"}
    with torch.no_grad():
        for gate in model.gates.values():
            gate.weight.normal_()
            gate.bias.normal_()
    x = torch.randn(5, cfg.data.feature_dim())
    for task in ("anchor", "opposed"):
        gate = model.gates[task]
        logits = x @ gate.weight.T + gate.bias
        weights = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
        expected = sum(weights[:, e : e + 1] * model.encoder[e](x) for e in range(3))
        assert torch.allclose(model(x, task), model.heads[task](expected), atol=1e-6)
    assert not torch.allclose(model(x, "anchor"), model(x, "aligned"))  # each task its own mixture


def test_experts_start_apart_and_gates_start_uniform():
    cfg = config()
    model = model_of(cfg)
    first, second = (dict(model.encoder[e].named_parameters()) for e in (0, 1))
    assert not torch.equal(first["0.0.weight"], second["0.0.weight"])
    weights = model.gate_weights(torch.randn(7, cfg.data.feature_dim()), "anchor")
    assert torch.allclose(weights, torch.full((7, 3), 1 / 3))
    # the shared encoder is the experts, every task's gate is private
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed)
    assert {k.split(".")[1] for k in shared} == {"0", "1", "2"} and not any("gates" in k for k in shared)


def test_gate_diagnostics_match_hand_values():
    """Two examples, gate weights (0.5, 0.5, 0) and (1, 0, 0) by construction: usage (0.75, 0.25, 0),
    entropy (log 2 + 0) / 2."""
    cfg = config()
    model = model_of(cfg)
    dim = cfg.data.feature_dim()
    with torch.no_grad():
        gate = model.gates["anchor"]
        gate.weight.zero_()
        gate.bias.copy_(torch.tensor([0.0, 0.0, -1e4]))  # example 1: experts 0 and 1 alike
        gate.weight[0, 0] = 1e4  # example 2 has x_0 = 1: expert 0 alone
    x = torch.zeros(2, dim)
    x[1, 0] = 1.0
    found = gate_diagnostics(model, {"anchor": TaskData(x, torch.zeros(2, 1))})
    assert found.keys() == {"anchor"}
    assert found["anchor"]["expert_0"] == pytest.approx(0.75)
    assert found["anchor"]["expert_1"] == pytest.approx(0.25)
    assert found["anchor"]["expert_2"] == pytest.approx(0.0, abs=1e-12)
    assert found["anchor"]["entropy"] == pytest.approx(math.log(2) / 2)


def test_training_moves_the_gates_and_never_sends_them():
    cfg = config()
    client = LocalClient.for_client(cfg, 0)
    shared = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed)
    outcome = client.train(shared, None, 1)
    gates = {k: v for k, v in outcome.private.items() if ".gates." in k}
    assert {k.split(".")[2] for k in gates} == {"anchor", "aligned"}  # the client's two tasks
    assert all(v.abs().sum() > 0 for k, v in gates.items() if k.endswith("weight"))  # trained away from zero
    assert set(outcome.shared) == set(shared)
    usage = {k: v for k, v in outcome.metrics.items() if k.startswith("gate/")}
    assert {k.split("/")[1] for k in usage} == {"anchor", "aligned"}
    for task in ("anchor", "aligned"):
        assert sum(usage[f"gate/{task}/expert_{e}"] for e in range(3)) == pytest.approx(1.0)
        assert 0 < usage[f"gate/{task}/entropy"] < math.log(3)


def test_hard_sharing_has_no_gates_and_reports_none():
    cfg = load_config(None, list(TINY_OVERRIDES))
    outcome = LocalClient.for_client(cfg, 0).train(
        initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed), None, 1
    )
    assert not any(k.startswith("gate/") for k in outcome.metrics)
    assert not any(".gates." in k for k in outcome.private)


def reading(client, task, usage, round_=1):
    return GateReading(client, task, round_, usage, 0.5, math.log(len(usage)))


def test_overlaps_of_usage_vectors():
    assert overlap((0.5, 0.5, 0.0), (0.0, 0.5, 0.5)) == pytest.approx(0.5)
    assert overlap((1.0, 0.0), (0.0, 1.0)) == 0.0
    readings = [
        reading(0, "a", (1.0, 0.0)),
        reading(1, "a", (0.5, 0.5)),
        reading(2, "b", (0.0, 1.0)),
        reading(0, "b", (0.2, 0.8)),
    ]
    found = task_overlaps(readings)
    assert found["a", "a"] == pytest.approx(0.5)  # clients 0 and 1
    assert found["b", "b"] == pytest.approx(0.8)  # clients 2 and 0
    # a x b: (0,a)-(2,b) 0, (0,a)-(0,b) 0.2, (1,a)-(2,b) 0.5, (1,a)-(0,b) 0.7
    assert found["a", "b"] == pytest.approx((0.0 + 0.2 + 0.5 + 0.7) / 4)
    assert task_overlaps([reading(0, "a", (1.0, 0.0))]) == {}  # no pair of distinct readings
    [a, b] = per_task(readings)
    assert a.usage == pytest.approx((0.75, 0.25)) and a.clients == 2 and b.usage == pytest.approx((0.1, 0.9))
    table = gates_table([a, b]).splitlines()
    assert table[0].split("|")[1:4] == [" task ", " clients ", " entropy (uniform) "] and "0.750" in table[2]


def test_a_run_records_every_clients_gates_and_summarises_them(tmp_path):
    cfg = config("rounds=2", "server.fraction_fit=0.67", f"output.run_dir={tmp_path / 'run'}")
    federate_in_process(cfg)
    rows = read_rows(tmp_path / "run" / "clients.jsonl")
    assert rows and all(set(r["gates"]) == set(r["task_weights"]) for r in rows)
    for row in rows:
        for gate in row["gates"].values():
            assert len(gate["usage"]) == 3 and sum(gate["usage"]) == pytest.approx(1.0)
            assert gate["uniform_entropy"] == pytest.approx(math.log(3))
    readings = final_readings(tmp_path / "run" / "clients.jsonl")
    last_round = {(r["client"], t): r["round"] for r in rows for t in r["gates"]}  # rows come in round order
    assert {(g.client, g.task): g.round for g in readings} == last_round
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    by_task = {g["task"]: g for g in summary["gates"]}
    assert by_task.keys() == {"anchor", "aligned", "orthogonal", "opposed"}
    for task, gates in by_task.items():
        mine = [g for g in readings if g.task == task]
        assert gates["clients"] == len(mine)
        assert gates["usage"] == pytest.approx([sum(g.usage[e] for g in mine) / len(mine) for e in range(3)])
    assert "## Expert gates" in (tmp_path / "run" / "summary.md").read_text()
