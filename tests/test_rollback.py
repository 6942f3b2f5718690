"""Per-client roll-back (``client.rollback``, ``fedmtl/local/rollback.py``): the validation split is
carved from training data only, the choice follows the validation losses (local when the federated
model is worse, federated when it is better), the evaluation reports the chosen predictor, and a
run records every choice with its evidence and resumes bit for bit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.files import read_rows
from fedmtl.data.suites import TaskData
from fedmtl.local import client as client_module
from fedmtl.local.client import LOCAL, LocalClient
from fedmtl.local.data import ParticipantData, participant_data
from fedmtl.local.rollback import FEDERATED, MIX, OPTIONS, carve_validation, choose
from fedmtl.local.rollback import LOCAL as LOCAL_OPTION
from tests.helpers import tiny_overrides
from tests.loopback import run_in_process

TINY = tiny_overrides(3)
ROLLBACK = "client.rollback={validation_fraction: 0.25}"


def test_validation_is_a_seeded_disjoint_part_of_each_tasks_training_data():
    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    data = {
        "a": TaskData(x, torch.arange(20.0)),
        "b": TaskData(x[:3], torch.arange(3.0)),
        "c": TaskData(x[:1], torch.zeros(1)),
    }
    train, validation = carve_validation(data, 0.25, seed=7)
    assert [len(validation[t]) for t in "abc"] == [5, 1, 0]  # round(0.25 n), at least one, none of a single example
    for task in "abc":
        held, kept = set(validation[task].y.tolist()), set(train[task].y.tolist())
        assert not held & kept and held | kept == set(data[task].y.tolist())
    again, _ = carve_validation(data, 0.25, seed=7)
    assert torch.equal(again["a"].y, train["a"].y)
    assert not torch.equal(carve_validation(data, 0.25, seed=8)[1]["a"].y, validation["a"].y)


@pytest.mark.parametrize(
    ("losses", "margin", "expected"),
    [
        ({FEDERATED: 1.0, LOCAL_OPTION: 0.5, MIX: 0.7}, 0.0, LOCAL_OPTION),
        ({FEDERATED: 1.0, LOCAL_OPTION: 0.8, MIX: 0.7}, 0.0, MIX),
        ({FEDERATED: 1.0, LOCAL_OPTION: 0.95, MIX: 0.97}, 0.1, FEDERATED),  # 5 % better is within the margin
        ({FEDERATED: 1.0, LOCAL_OPTION: 0.85, MIX: 0.97}, 0.1, LOCAL_OPTION),
        ({FEDERATED: 0.5, LOCAL_OPTION: 0.5, MIX: 0.5}, 0.0, FEDERATED),  # ties stay federated
        ({FEDERATED: 1.0, LOCAL_OPTION: 0.5, MIX: 0.5}, 0.0, LOCAL_OPTION),  # local before mix on a tie
    ],
)
def test_the_choice_follows_the_validation_losses(losses, margin, expected):
    assert choose(losses, margin) == expected


def trained_client(cfg):
    """Client 0 after three rounds in which the server sends back its own encoder."""
    client = LocalClient.for_client(cfg, 0)
    shared = {k: v for k, v in client.build_model({}, {}).state_dict().items() if client.is_shared(k)}
    private = None
    for server_round in (1, 2, 3):
        outcome = client.train(shared, private, server_round)
        shared, private = outcome.shared, outcome.private
    assert shared and private
    return client, shared, private


def choices_of(report) -> dict[str, str]:
    return {t: OPTIONS[int(m["choice"])] for t, m in protocol.unflatten_task_metrics(report, protocol.ROLLBACK).items()}


def test_a_broken_federated_encoder_rolls_back_and_a_broken_local_model_does_not():
    cfg = load_config(None, [*TINY, ROLLBACK, "client.local_steps=10"])
    client, shared, private = trained_client(cfg)
    broken_encoder = {k: torch.randn_like(v) * 10 for k, v in shared.items()}
    (report,) = client.evaluate(broken_encoder, private)
    assert set(choices_of(report).values()) <= {LOCAL_OPTION, MIX} and LOCAL_OPTION in choices_of(report).values()
    broken_local = {k: (torch.randn_like(v) * 10 if k.startswith(LOCAL) else v) for k, v in private.items()}
    (report,) = client.evaluate(shared, broken_local)
    assert set(choices_of(report).values()) == {FEDERATED}
    # the evaluation reports the chosen predictor: here the federated model's own loss
    rollback = protocol.unflatten_task_metrics(report, protocol.ROLLBACK)
    for task, metrics in protocol.unflatten_task_metrics(report, protocol.EVAL).items():
        assert metrics["loss"] == pytest.approx(rollback[task]["eval_federated"])


def test_the_choice_never_reads_evaluation_data(monkeypatch):
    """Replacing the client's evaluation data changes the evaluation losses, not the choices or the
    validation losses that made them."""
    cfg = load_config(None, [*TINY, ROLLBACK])
    client, shared, private = trained_client(cfg)
    (plain,) = client.evaluate(shared, private)
    real = client_module.participant_data

    def scrambled(cfg, participant, server_round=0):
        data = real(cfg, participant, server_round)
        evals = tuple((c, {t: TaskData(d.x * -3 + 1, d.y) for t, d in held.items()}) for c, held in data.evals)
        return ParticipantData(data.train, evals)

    monkeypatch.setattr(client_module, "participant_data", scrambled)
    (other,) = client.evaluate(shared, private)
    first, second = (protocol.unflatten_task_metrics(r, protocol.ROLLBACK) for r in (plain, other))
    assert {t: {k: v for k, v in m.items() if not k.startswith("eval_")} for t, m in first.items()} == {
        t: {k: v for k, v in m.items() if not k.startswith("eval_")} for t, m in second.items()
    }
    assert any(first[t]["eval_federated"] != second[t]["eval_federated"] for t in first)


def test_without_rollback_nothing_is_held_out_or_kept():
    cfg = load_config(None, list(TINY))
    client = LocalClient.for_client(cfg, 0)
    shared = {k: v for k, v in client.build_model({}, {}).state_dict().items() if client.is_shared(k)}
    outcome = client.train(shared, None, 1)
    assert not any(k.startswith(LOCAL) for k in outcome.private)
    with_rollback = LocalClient.for_client(load_config(None, [*TINY, ROLLBACK]), 0).train(shared, None, 1)
    sizes = [len(d) for d in participant_data(cfg, client.participant).train.values()]
    assert protocol.as_number(outcome.metrics[protocol.NUM_EXAMPLES]) == sum(sizes)
    held = sum(max(1, round(0.25 * n)) for n in sizes)
    assert protocol.as_number(with_rollback.metrics[protocol.NUM_EXAMPLES]) == sum(sizes) - held


def test_a_run_records_each_choice_and_resumes_bit_for_bit(tmp_path):
    common = (*TINY, "rounds=4", "checkpoint.every=1", ROLLBACK)
    reference = run_in_process(tmp_path, "reference", *common)
    rows = read_rows(reference / "rollback.jsonl")
    assert {r["round"] for r in rows} == {1, 2, 3, 4}  # round 0: no local model yet
    assert all(r["choice"] in OPTIONS and r["val_local"] is not None for r in rows)
    evaluated = {
        (r["round"], r["client"], r["task"]): r["loss"]
        for r in read_rows(reference / "metrics.jsonl")
        if r["split"] == "eval"
    }
    for r in rows:
        assert evaluated[(r["round"], r["client"], r["task"])] == pytest.approx(r[f"eval_{r['choice']}"])
    with pytest.raises(ConnectionError):
        run_in_process(tmp_path, "run", *common, fail_at_train=3)
    run_dir = tmp_path / "run"
    run_in_process(tmp_path, "run", *common, **{"resume-dir": str(run_dir)})
    assert read_rows(run_dir / "rollback.jsonl") == rows
    assert read_rows(run_dir / "metrics.jsonl") == read_rows(reference / "metrics.jsonl")


@pytest.mark.parametrize(
    ("key", "value"), [("validation_fraction", 1.0), ("validation_fraction", -0.1), ("margin", 1.0)]
)
def test_rollback_settings_out_of_range_are_refused(key, value):
    from fedmtl.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"client.rollback.{key}={value}"])
    assert caught.value.path == f"client.rollback.{key}"


def test_rollback_config_is_off_by_default():
    assert not load_config(None, []).client.rollback.enabled
    assert dataclasses.replace(load_config(None, [ROLLBACK]).client.rollback).enabled
