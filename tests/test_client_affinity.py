"""Client affinity (``server.client_affinity_every``): client j measures on its own data how much each
client i's last round update lowers its losses, Z(i -> j) = mean_t 1 - L_t(theta_i) / L_t(theta). The
formula against a direct computation and its sign by construction; what the training message carries
(the group's trained encoders, never heads) and what the reply does not; probing leaves training as it
was; the server's rows; and grouping on it."""

from __future__ import annotations

import pytest
import torch

from clients.client_app import make_client_app
from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.files import read_rows
from fedmtl.federation.algorithm import ServerAlgorithm
from fedmtl.local.affinity import client_lookahead_affinity
from fedmtl.local.data import client_data
from fedmtl.methods.grouping import AffinityGrouping, GroupRound
from fedmtl.methods.grouping.affinity import client_similarity
from fedmtl.model.networks import MultiTaskModel
from tests.helpers import tiny_overrides
from tests.loopback import run_in_process
from tests.test_wire import _all_array_keys, _context, _train_message

FOUR = tiny_overrides(4)


def client_setup(tiny_config):
    cfg = tiny_config
    data = client_data(cfg, 0).train
    specs = {s.name: s for s in cfg.data.task_specs() if s.name in data}
    torch.manual_seed(0)
    model = MultiTaskModel(cfg.model, cfg.data.feature_dim(), specs.values())
    batches = {t: (d.x[:32], d.y[:32]) for t, d in data.items()}
    base = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("encoder.")}
    return model, batches, specs, base


def moved(model, batches, specs, base, step):
    """``base`` after one gradient step of size ``step`` on the client's own summed task loss."""
    model.zero_grad()
    sum(specs[t].kind_impl.loss(model(x, t), y) for t, (x, y) in batches.items()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if n in base}
    model.zero_grad()
    return {k: base[k] - step * grads[k] for k in base}


def test_client_affinity_is_the_loss_ratio_and_has_the_sign_of_the_step(tiny_config):
    model, batches, specs, base = client_setup(tiny_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    helps, hurts = moved(model, batches, specs, base, 0.05), moved(model, batches, specs, base, -0.05)
    z = client_lookahead_affinity(model, batches, specs, base, {3: base, 5: helps, 7: hurts})
    assert z[3] == 0.0
    assert z[5] > 0 > z[7]
    # against a direct computation: load each encoder into the model and take the losses
    model.eval()

    def losses(encoder):
        model.load_state_dict({**before, **encoder})
        with torch.no_grad():
            return {t: float(specs[t].kind_impl.loss(model(x, t), y)) for t, (x, y) in batches.items()}

    plain, stepped = losses(base), losses(helps)
    expected = sum(1 - stepped[t] / plain[t] for t in plain) / len(plain)
    model.load_state_dict(before)
    assert z[5] == pytest.approx(expected, rel=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is untouched


def test_a_probe_round_sends_the_groups_trained_encoders_and_nothing_else(tiny_config, flower_identity):
    """The server's training message of the round after a probed one carries the encoder it sent and each
    client's trained encoder (encoder keys only); the client trains only the encoder, replies only the
    encoder, and reports one Z per probed client."""
    cfg = load_config(None, [*FOUR, "server.client_affinity_every=2"])
    algorithm = ServerAlgorithm(cfg)
    (cohort,) = algorithm.cohorts
    encoder = cohort.global_state()
    trained = {c: {k: v + c for k, v in encoder.items()} for c in (0, 1, 2)}
    algorithm._probes = {cohort.key: (encoder, trained)}
    (send, *_) = algorithm.train_sends(3, {})
    shared, base, probed = protocol.split_probes(send.arrays)
    assert set(shared) == set(encoder) and set(base) == set(encoder) and sorted(probed) == [0, 1, 2]
    assert all(k.startswith("encoder.") for state in probed.values() for k in state)
    assert not any("heads" in k for k in send.arrays)
    assert algorithm.evaluate_sends(3, {})[0].arrays is encoder  # evaluation carries no probes

    app = make_client_app(cfg)
    reply = app(_train_message(dict(send.arrays), 3), _context(partition=1))
    assert _all_array_keys(reply) == set(encoder)
    metrics = reply.content[protocol.METRICS]
    pairs = protocol.unflatten_pair_metrics(metrics, protocol.CLIENT_AFFINITY)
    assert sorted(pairs) == [("0", "1"), ("1", "1"), ("2", "1")]


def test_probing_changes_no_training_and_the_server_records_each_pair(tmp_path):
    run_dir = run_in_process(tmp_path, "run", *FOUR, "rounds=4", "server.client_affinity_every=2", nodes=4)
    plain = run_in_process(tmp_path, "plain", *FOUR, "rounds=4", nodes=4)
    assert read_rows(run_dir / "metrics.jsonl") == read_rows(plain / "metrics.jsonl")
    rows = read_rows(run_dir / "server.jsonl")
    probed = [r["round"] for r in rows if r.get("client_affinity")]
    assert probed == [3]  # round 2's updates, probed in round 3 (round 4's would be probed in round 5)
    (row,) = [r for r in rows if r["round"] == 3]
    pairs = {(p["from"], p["to"]): p["affinity"] for p in row["client_affinity"]}
    assert sorted(pairs) == [(i, j) for i in range(4) for j in range(4)]
    assert all(pairs[(i, i)] > 0 for i in range(4))  # a client's own round lowers its own losses
    assert rows[2]["bytes_down"] > 3 * rows[1]["bytes_down"]  # the probes are paid for on the wire


def test_client_similarity_normalises_by_each_clients_own_progress():
    affinity = {(0, 0): 0.4, (1, 1): 0.1, (0, 1): 0.1, (1, 0): 0.3, (2, 2): 0.0, (0, 2): 0.5}
    similarity = client_similarity([0, 1, 2], affinity)
    assert similarity[0, 1] == pytest.approx(0.2 / (0.4 * 0.1) ** 0.5)  # 1.0 after clipping
    assert similarity[0, 1] == 1.0 and similarity[0, 2] == 0.0  # client 2 made no progress on itself
    affinity[(0, 1)] = affinity[(1, 0)] = -0.05
    assert client_similarity([0, 1], affinity)[0, 1] == pytest.approx(-0.05 / 0.2)


def test_affinity_grouping_on_client_affinity_recovers_two_camps():
    """Clients 0-3 help each other and hurt 4-7 (and back): after the warm-up, the two camps."""
    affinity = {(i, j): (0.2 if (i < 4) == (j < 4) else -0.1) for i in range(8) for j in range(8)}
    members = tuple(range(8))
    seen = GroupRound(members, members, torch.eye(8, dtype=torch.float64), min_size=2, client_affinity=affinity)
    regrouper = AffinityGrouping(signal="clients", warmup_rounds=2).start()
    assert regrouper.observe(1, seen) is None
    assert sorted(regrouper.observe(2, seen)) == [(0, 1, 2, 3), (4, 5, 6, 7)]


def test_a_grouped_run_on_client_affinity_resumes_bit_for_bit(tmp_path):
    common = (
        *FOUR, "rounds=4", "checkpoint.every=1", "server.client_affinity_every=1",
        "server.grouping={name: affinity, signal: clients, warmup_rounds: 2, min_silhouette: -1, max_cross_similarity: 1}",
    )  # fmt: skip
    reference = run_in_process(tmp_path, "reference", *common, nodes=4)
    with pytest.raises(ConnectionError):
        run_in_process(tmp_path, "run", *common, nodes=4, fail_at_train=3)
    run_dir = tmp_path / "run"
    run_in_process(tmp_path, "run", *common, nodes=4, **{"resume-dir": str(run_dir)})
    drop = ("started_at", "seconds")
    server = [{k: v for k, v in r.items() if k not in drop} for r in read_rows(run_dir / "server.jsonl")]
    expected = [{k: v for k, v in r.items() if k not in drop} for r in read_rows(reference / "server.jsonl")]
    assert server == expected
    assert expected[1]["splits"]  # the rule split on the probed affinity (permissive thresholds)
    assert expected[2]["client_affinity"] and expected[3]["client_affinity"]
