"""Adversarial (Byzantine) clients injected by ``faults.attack``: who attacks, what crosses the wire,
what the server aggregates, and what the run files record."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.client_app import make_client_app
from fedmtl.config.experiment import ExperimentConfig
from fedmtl.config.loading import load_config
from fedmtl.config.sections import FaultsConfig, ServerOptimizerConfig
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.core.layout import CLIENTS_FILE, SERVER_FILE
from fedmtl.data.clients import ClientsConfig
from fedmtl.driver.recording import attacking_clients
from fedmtl.federation.server_update import ServerUpdater
from fedmtl.local.faults import ATTACKS, adversarial_clients, attack_generator, attack_update, draw_faults
from fedmtl.methods.aggregation import FedAvg
from fedmtl.model.networks import initial_encoder_state
from tests.helpers import TINY_OVERRIDES, assert_no_leftover_processes, set_args, simulate, tiny_overrides

# ----------------------------------------------------------------------------- who attacks


def test_attack_names_match_the_config_choices() -> None:
    hints = typing.get_type_hints(FaultsConfig)
    assert set(typing.get_args(hints["attack"])) == {"none", *ATTACKS}


def test_attackers_are_drawn_from_the_seed_and_stay_fixed() -> None:
    clients = range(8)
    faults = FaultsConfig(attack="sign_flip", adversarial_fraction=0.25)
    chosen = adversarial_clients(faults, 3, clients)
    assert len(chosen) == 2 and chosen <= set(clients)
    assert adversarial_clients(faults, 3, clients) == chosen  # the same set every call (and so every round)
    assert len({adversarial_clients(faults, seed, clients) for seed in range(10)}) > 1  # another seed, other clients
    nested = [
        adversarial_clients(dataclasses.replace(faults, adversarial_fraction=f), 3, clients)
        for f in (0.125, 0.25, 0.375, 1.0)
    ]
    assert [len(s) for s in nested] == [1, 2, 3, 8]
    assert nested[0] <= nested[1] <= nested[2] <= nested[3]  # a larger fraction adds attackers
    for r in (1, 2, 7):
        attacks = {c: draw_faults(faults, 3, r, c, adversaries=chosen).attack for c in clients}
        assert {c for c, a in attacks.items() if a == "sign_flip"} == chosen
        assert {a for c, a in attacks.items() if c not in chosen} == {"none"}


def test_named_attackers_and_no_attack() -> None:
    named = FaultsConfig(attack="noise", adversarial_clients=(5, 1))
    assert adversarial_clients(named, 0, range(8)) == {1, 5}
    assert adversarial_clients(FaultsConfig(), 0, range(8)) == frozenset()  # attack: none
    assert adversarial_clients(FaultsConfig(attack="scale", adversarial_fraction=0.1), 0, range(8)) == frozenset()


def test_attacks_leave_the_other_fault_draws_unchanged() -> None:
    plain = FaultsConfig(client_error_rate=0.3, client_nan_rate=0.2)
    attacked = dataclasses.replace(plain, attack="scale", adversarial_clients=(0, 1))
    for r in range(1, 20):
        for c in range(4):
            before, after = draw_faults(plain, 1, r, c), draw_faults(attacked, 1, r, c, adversaries={0, 1})
            assert (before.error, before.nan) == (after.error, after.nan)


# ----------------------------------------------------------------------------- what crosses the wire


def _train_message(arrays: dict, server_round: int) -> Message:
    config = ConfigRecord({protocol.SERVER_ROUND: server_round})
    return Message(
        RecordDict({protocol.ARRAYS: ArrayRecord(arrays), protocol.CONFIG: config}),
        dst_node_id=11,
        message_type="train",
    )


def _reply(cfg: ExperimentConfig, encoder: dict, partition: int, server_round: int = 1) -> Message:
    context = Context(
        run_id=1,
        node_id=11,
        node_config={"partition-id": partition, "num-partitions": 3},
        state=RecordDict(),
        run_config={},
    )
    reply = make_client_app(cfg)(_train_message(encoder, server_round), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply


def _with_faults(cfg: ExperimentConfig, **faults) -> ExperimentConfig:
    return dataclasses.replace(cfg, faults=FaultsConfig(**faults))


def _sent_update(reply: Message, received: dict) -> dict[str, torch.Tensor]:
    sent = reply.content[protocol.ARRAYS].to_torch_state_dict()
    return {k: received[k] - sent[k] for k in received}


@pytest.mark.parametrize(
    ("attack", "scale", "factor"), [("sign_flip", 1.0, -1.0), ("sign_flip", 3.0, -3.0), ("scale", 10.0, 10.0)]
)
def test_a_scaling_attack_multiplies_the_update_that_crosses_the_wire(
    tiny_config, flower_identity, attack, scale, factor
):
    encoder = initial_encoder_state(tiny_config.model, tiny_config.data.feature_dim(), tiny_config.seed)
    honest = _reply(tiny_config, encoder, partition=1)
    forged = _reply(
        _with_faults(tiny_config, attack=attack, attack_scale=scale, adversarial_clients=(1,)), encoder, partition=1
    )
    assert set(forged.content[protocol.ARRAYS]) == set(encoder)  # only encoder keys, as ever
    honest_update, forged_update = _sent_update(honest, encoder), _sent_update(forged, encoder)
    assert any(float(v.abs().max()) > 0 for v in honest_update.values())
    for key in encoder:
        torch.testing.assert_close(forged_update[key], factor * honest_update[key], rtol=1e-5, atol=1e-6)
    assert forged.content[protocol.METRICS][protocol.ATTACKED] == 1.0
    assert protocol.ATTACKED not in honest.content[protocol.METRICS]
    # the client's own training (its losses) is unchanged: only the reported update is forged
    assert (
        forged.content[protocol.METRICS][protocol.TRAIN_LOSS] == honest.content[protocol.METRICS][protocol.TRAIN_LOSS]
    )


def test_a_noise_attack_sends_seeded_gaussian_noise_of_the_given_std(tiny_config, flower_identity):
    encoder = initial_encoder_state(tiny_config.model, tiny_config.data.feature_dim(), tiny_config.seed)
    cfg = _with_faults(tiny_config, attack="noise", attack_scale=0.5, adversarial_fraction=1.0)
    first, again = _sent_update(_reply(cfg, encoder, 0), encoder), _sent_update(_reply(cfg, encoder, 0), encoder)
    honest = _sent_update(_reply(tiny_config, encoder, 0), encoder)
    noise = torch.cat([first[k].flatten() for k in sorted(first)])
    assert noise.numel() > 100
    assert 0.4 < float(noise.std()) < 0.6 and abs(float(noise.mean())) < 0.1
    assert all(torch.equal(first[k], again[k]) for k in first)  # drawn from (seed, round, client)
    other_round = _sent_update(_reply(cfg, encoder, 0, server_round=2), encoder)
    assert not all(torch.equal(first[k], other_round[k]) for k in first)
    correlation = torch.corrcoef(torch.stack([noise, torch.cat([honest[k].flatten() for k in sorted(honest)])]))[0, 1]
    assert abs(float(correlation)) < 0.2  # unrelated to the honest update


def test_a_client_outside_the_adversarial_set_sends_its_honest_update(tiny_config, flower_identity):
    encoder = initial_encoder_state(tiny_config.model, tiny_config.data.feature_dim(), tiny_config.seed)
    honest = _reply(tiny_config, encoder, partition=2)
    bystander = _reply(_with_faults(tiny_config, attack="sign_flip", adversarial_clients=(1,)), encoder, partition=2)
    for key, value in honest.content[protocol.ARRAYS].to_torch_state_dict().items():
        assert torch.equal(bystander.content[protocol.ARRAYS].to_torch_state_dict()[key], value)
    assert protocol.ATTACKED not in bystander.content[protocol.METRICS]


def test_heads_and_integer_buffers_are_never_forged():
    received = {"encoder.w": torch.zeros(3), "encoder.steps": torch.tensor(4), "heads.a.w": torch.zeros(2)}
    trained = {
        "encoder.w": torch.tensor([1.0, -2.0, 0.5]),
        "encoder.steps": torch.tensor(5),
        "heads.a.w": torch.ones(2),
    }
    sent = attack_update("scale", 2.0, received, trained, attack_generator(0, 1, 0))
    assert sent["encoder.w"].tolist() == [2.0, -4.0, 1.0]
    assert torch.equal(sent["encoder.steps"], trained["encoder.steps"])
    assert torch.equal(sent["heads.a.w"], trained["heads.a.w"])


def test_the_server_aggregates_the_forged_update(tiny_config, flower_identity):
    """The server's row for an attacker (``global - sent``) is ``-attack_scale`` times its honest row."""
    encoder = initial_encoder_state(tiny_config.model, tiny_config.data.feature_dim(), tiny_config.seed)
    updater = ServerUpdater(encoder, FedAvg(), ServerOptimizerConfig(), seed=0)
    honest = _reply(tiny_config, encoder, partition=0).content[protocol.ARRAYS].to_torch_state_dict()
    cfg = _with_faults(tiny_config, attack="sign_flip", attack_scale=2.0, adversarial_clients=(0,))
    forged = _reply(cfg, encoder, partition=0).content[protocol.ARRAYS].to_torch_state_dict()
    rows = updater.update_matrix([honest, forged])
    torch.testing.assert_close(rows[1], -2.0 * rows[0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- what the run files record


def test_the_run_files_name_the_attackers(tmp_path):
    from tests.loopback import run_in_process

    attack = ("faults.attack=sign_flip", "faults.adversarial_clients=[2]", "server.min_fit_fraction=0.1")
    run_dir = run_in_process(tmp_path, "run", *TINY_OVERRIDES, "rounds=1", *attack)
    assert [(r["client"], r["attacked"]) for r in read_rows(run_dir / CLIENTS_FILE)] == [
        (0, False),
        (1, False),
        (2, True),
    ]
    assert read_rows(run_dir / SERVER_FILE)[0]["adversarial"] == [2]
    reports = [{protocol.CLIENT_ID: 2.0, protocol.ATTACKED: 1.0}, {protocol.CLIENT_ID: 0.0}]
    assert attacking_clients(reports) == [2]


# ----------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    ("override", "path", "words"),
    [
        ("faults.attack=flip", "faults.attack", "sign_flip"),
        ("faults.attack_scale=0", "faults.attack_scale", "must be > 0"),
        ("faults.adversarial_fraction=1.5", "faults.adversarial_fraction", "[0, 1]"),
        ("faults.adversarial_clients=[1, 1]", "faults.adversarial_clients", "distinct"),
        ("faults.adversarial_clients=[-1]", "faults.adversarial_clients", "distinct"),
        ("faults.adversarial_clients=[3]", "faults.adversarial_clients[0]", "does not take part"),
        ("faults.adversarial_clients=[0, 7]", "faults.adversarial_clients[1]", "clients.count 3"),
    ],
)
def test_bad_adversarial_settings_are_config_errors_naming_the_key(override: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, [*TINY_OVERRIDES, "faults.attack=sign_flip", override])
    assert raised.value.path == path and words in raised.value.message


def test_fraction_and_named_attackers_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="not both") as raised:
        load_config(None, [*TINY_OVERRIDES, "faults.adversarial_fraction=0.5", "faults.adversarial_clients=[0]"])
    assert raised.value.path == "faults"


# ----------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_a_run_with_attackers_records_them_every_round(tmp_path, simulate_env):
    run_dir = tmp_path / "attacked"
    overrides = (*tiny_overrides(4), "rounds=2", "faults.attack=sign_flip", "faults.adversarial_fraction=0.5")
    result = simulate(
        *set_args((*overrides, "server.aggregator.name=median", f"output.run_dir={run_dir}")), env=simulate_env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = sorted(adversarial_clients(FaultsConfig(attack="sign_flip", adversarial_fraction=0.5), 0, range(4)))
    assert len(expected) == 2
    assert [row["adversarial"] for row in read_rows(run_dir / SERVER_FILE)] == [expected, expected]
    clients = read_rows(run_dir / CLIENTS_FILE)
    assert sorted((r["round"], r["client"]) for r in clients if r["attacked"]) == [
        (r, c) for r in (1, 2) for c in expected
    ]
    assert_no_leftover_processes(simulate_env)


def test_attackers_without_an_attack_are_refused():
    with pytest.raises(ConfigError, match="faults.attack is none") as caught:
        load_config(None, ["faults.adversarial_clients=[1]"])
    assert caught.value.path == "faults.adversarial_clients"
    assert (
        load_config(None, ["faults.attack=sign_flip", "faults.adversarial_fraction=0.0"]).faults.attack == "sign_flip"
    )


def test_a_client_asks_for_the_adversaries_without_listing_a_million_members():
    """Every training call asks; the members are a range when every client takes part, so that costs
    nothing, and the draw over them is the one over the listed ids."""
    members = ClientsConfig(count=1_000_000).member_ids()
    assert members == range(1_000_000)
    attack = FaultsConfig(attack="scale", adversarial_fraction=0.25)
    assert adversarial_clients(attack, 0, range(8)) == adversarial_clients(attack, 0, tuple(range(8)))
