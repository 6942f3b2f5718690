"""Client-level differential privacy (DP-FedAvg): what leaves a client under local noise, the noise on
the server's aggregate under central noise, the accountant against the library's own computation, the
budget that stops a run, and the combinations refused before training."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
import torch
from dp_accounting import rdp

from fedmtl.config.loading import load_config
from fedmtl.config.sections import PrivacyConfig, ServerOptimizerConfig
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.federation.server_update import ServerUpdater
from fedmtl.local.client import LocalClient
from fedmtl.methods.accounting import central_epsilon, local_epsilon
from fedmtl.methods.aggregation.fedavg import FedAvg
from fedmtl.methods.privacy import clip_rows, privatise_update
from fedmtl.model.networks import initial_shared_state
from tests.helpers import TINY_OVERRIDES
from tests.loopback import run_in_process


def test_clipping_scales_long_rows_to_the_bound_and_leaves_short_ones():
    matrix = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clip_rows(matrix, 1.0)
    assert torch.allclose(matrix, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


def test_a_locally_noised_update_is_the_clipped_update_plus_noise_of_std_z_c():
    update = torch.full((4000,), 0.5)  # norm sqrt(1000) ~ 31.6, clipped to 2
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([privatise_update(update, 2.0, 0.25, generator) for _ in range(200)])
    clipped = update * (2.0 / update.norm())
    noise = draws - clipped
    assert noise.mean().abs() < 3 * 0.5 / math.sqrt(noise.numel())  # mean 0 (std 0.5, 800k draws)
    assert noise.std().item() == pytest.approx(0.25 * 2.0, rel=0.01)
    assert torch.allclose(draws.mean(0), clipped, atol=4 * 0.5 / math.sqrt(200))


def test_every_update_leaving_a_client_under_local_noise_carries_the_bound_plus_its_noise():
    cfg = load_config(None, [*TINY_OVERRIDES, "privacy={clip_norm: 0.05, noise_multiplier: 2.0, noise_at: client}"])
    received = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed)
    keys = sorted(received)
    start = torch.cat([received[k].reshape(-1) for k in keys])
    deviations = []
    for server_round in range(1, 31):
        sent = LocalClient.for_client(cfg, 0).train(received, None, server_round).shared
        update = start - torch.cat([sent[k].reshape(-1) for k in keys])
        deviations.append(update)
    updates = torch.stack(deviations)
    # the noise dominates: per coordinate std z C = 0.1, and the clipped part has norm <= 0.05 in all
    per_coordinate = updates - updates.mean(0)
    assert per_coordinate.std().item() == pytest.approx(0.1, rel=0.05)
    assert updates.mean(0).norm().item() <= 0.05 + 4 * 0.1 * math.sqrt(start.numel() / 30)
    plain = load_config(None, list(TINY_OVERRIDES))
    unclipped = LocalClient.for_client(plain, 0).train(received, None, 1).shared
    assert (start - torch.cat([unclipped[k].reshape(-1) for k in keys])).norm() > 0.05  # so clipping mattered
    # without noise, what leaves the client is the clipped update itself: norm exactly at the bound
    clip_only = load_config(None, [*TINY_OVERRIDES, "privacy={clip_norm: 0.05, noise_at: client}"])
    sent = LocalClient.for_client(clip_only, 0).train(received, None, 1).shared
    assert (start - torch.cat([sent[k].reshape(-1) for k in keys])).norm().item() == pytest.approx(0.05, rel=1e-5)


def test_central_noise_on_the_mean_has_std_z_c_over_k():
    initial = {"w": torch.zeros(20000)}
    privacy = PrivacyConfig(clip_norm=1.0, noise_multiplier=3.0)
    updater = ServerUpdater(initial, FedAvg(weighted=False), ServerOptimizerConfig(), seed=0, central_privacy=privacy)
    states = [{"w": torch.full((20000,), -1.0)} for _ in range(4)]  # update +1 per coordinate, norm 141 -> 1
    updater.step([0, 1, 2, 3], states, [10.0, 1.0, 1.0, 1.0])
    moved = updater.param.detach()
    clipped_mean = 1.0 / math.sqrt(20000)  # each row clipped to norm 1, all equal: the mean is one of them
    assert moved.mean().item() == pytest.approx(clipped_mean, abs=4 * 0.75 / math.sqrt(20000))
    assert (moved - clipped_mean).std().item() == pytest.approx(3.0 * 1.0 / 4, rel=0.02)  # z C / K


def test_the_accountant_matches_the_library_for_the_same_schedule():
    event = dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.1))
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, 30))
    assert central_epsilon(1.1, 0.25, 30, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    alone = rdp.RdpAccountant()
    alone.compose(dp_accounting.GaussianDpEvent(2.0), 7)
    assert local_epsilon(2.0, 7, 1e-6) == pytest.approx(alone.get_epsilon(1e-6), rel=1e-9)
    assert central_epsilon(1.1, 0.25, 0, 1e-5) == local_epsilon(2.0, 0, 1e-5) == 0.0


def server_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "server.jsonl").read_text().splitlines()]


def test_epsilon_is_recorded_every_round_and_the_budget_stops_the_run_evaluated(tmp_path):
    privacy = "privacy={clip_norm: 1.0, noise_multiplier: 1.0, epsilon_budget: 14}"
    run_dir = run_in_process(
        tmp_path,
        "run",
        *TINY_OVERRIDES,
        "rounds=10",
        "eval_every=5",
        "server.aggregator={name: fedavg, weighted: false}",
        privacy,
    )
    rows = server_rows(run_dir)
    epsilons = [row["epsilon"] for row in rows]
    expected = [central_epsilon(1.0, 1.0, r, 1e-5) for r in range(1, 11)]
    last = max(r for r, e in enumerate(expected, 1) if e <= 14)  # 6 (13.8; round 7 would be 15.2)
    assert last < 10 and len(rows) == last
    assert epsilons == pytest.approx(expected[:last])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["round"] for r in metrics if r["split"] == "eval") == last  # evaluated before stopping
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "privacy budget" in summary["stopped"]
    assert summary["privacy"] == {"epsilon": pytest.approx(expected[last - 1]), "delta": 1e-5}


def test_local_noise_counts_each_clients_updates(tmp_path):
    privacy = "privacy={clip_norm: 1.0, noise_multiplier: 2.0, noise_at: client}"
    run_dir = run_in_process(
        tmp_path, "run", *TINY_OVERRIDES, "rounds=3", "server.fraction_fit=0.67", "server.aggregator=upgrad", privacy
    )
    sent: dict[int, int] = {}
    for row in server_rows(run_dir):
        for client in row["clients"]:
            sent[client] = sent.get(client, 0) + 1
        assert row["epsilon"] == pytest.approx(local_epsilon(2.0, max(sent.values()), 1e-5))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["privacy={clip_norm: 1.0, noise_multiplier: 1.0}"], "server.aggregator"),  # weighted fedavg
        (["privacy={clip_norm: 1.0}", "server.aggregator=pcgrad"], "server.aggregator"),
        (
            [
                "privacy={clip_norm: 1.0}",
                "server.aggregator={name: fedavg, weighted: false}",
                "server.personalisation={name: mixed}",
            ],
            "server.personalisation",
        ),
        (["privacy={clip_norm: 1.0, noise_at: client}", "server.federate_heads=true"], "server.federate_heads"),
        (["privacy={noise_multiplier: 1.0}"], "privacy.noise_multiplier"),
        (["privacy={clip_norm: 1.0, epsilon_budget: 3}"], "privacy.epsilon_budget"),
        (["privacy={clip_norm: -1}"], "privacy.clip_norm"),
    ],
)
def test_refused_combinations_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [*TINY_OVERRIDES, *overrides])
    assert raised.value.path == key


def test_adaptive_clipping_moves_the_bound_towards_the_target_quantile_of_update_norms():
    from fedmtl.methods.privacy import CentralMechanism, update_noise_multiplier

    mechanism = CentralMechanism(1.0, 0.0, target_quantile=0.5, clip_lr=0.2, count_noise=0.0)  # no noise: exact
    generator = torch.Generator().manual_seed(0)
    norms = torch.tensor([0.5, 2.0, 4.0, 8.0])  # the median lies between 2 and 4
    bounds = []
    for _ in range(60):
        matrix = torch.diag(norms)  # row k has norm norms[k]
        bounds.append(mechanism.clip(matrix))
        mechanism.noise(torch.zeros(4), 4, generator)
    # one round by hand: 1 of 4 rows within 1.0, so C <- 1.0 * exp(-0.2 * (0.25 - 0.5))
    assert bounds[1] == pytest.approx(math.exp(0.05))
    assert 2.0 <= bounds[-1] <= 4.0 * math.exp(0.1)
    # the update's multiplier: z_D = (z^-2 - (2 sigma_b)^-2)^(-1/2)
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx((1 - 0.25) ** -0.5)
    assert update_noise_multiplier(1.0, 0.4) == math.inf


def test_a_count_noise_that_spends_the_whole_budget_is_refused():
    with pytest.raises(ConfigError) as raised:
        load_config(
            None,
            [
                *TINY_OVERRIDES,
                "server.aggregator={name: fedavg, weighted: false}",
                "privacy={clip_norm: 1.0, noise_multiplier: 1.0, target_quantile: 0.5}",  # sigma_b = 3 / 20
            ],
        )
    assert raised.value.path == "privacy.count_noise" and "2 * count_noise" in str(raised.value)


def test_adaptive_clipping_is_recorded_and_checkpointed(tmp_path):
    privacy = "privacy={clip_norm: 0.01, noise_multiplier: 0.5, target_quantile: 0.5, count_noise: 0.5}"
    run_dir = run_in_process(
        tmp_path, "run", *TINY_OVERRIDES, "rounds=3", "server.aggregator={name: fedavg, weighted: false}", privacy
    )
    bounds = [row["clip_norm"] for row in server_rows(run_dir)]
    assert bounds[0] == 0.01 and bounds[2] > bounds[1] > bounds[0]  # every update is longer than 0.01
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["server"]
    (cohort,) = state["cohorts"].values()
    assert cohort["updater"]["privacy"]["clip_norm"] > bounds[2]


def test_the_study_report_lists_the_privacy_each_arm_spent(tmp_path):
    from fedmtl.report.report import write_report
    from tests.study._study import write_study

    root = write_study(tmp_path / "s")
    assert "Privacy spent" not in (write_report(root) and (root / "report.md").read_text())
    for seed, epsilon in ((0, 3.0), (1, 4.0), (2, 5.0)):
        path = root / f"arms/fed_mtl/seed-{seed}/summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**summary, "privacy": {"epsilon": epsilon, "delta": 1e-5}}))
        server = root / f"arms/fed_mtl/seed-{seed}/server.jsonl"
        rows = [json.loads(line) for line in server.read_text().splitlines()]  # epsilon r * (seed + 1) after round r
        server.write_text("".join(json.dumps({**r, "epsilon": r["round"] * (seed + 1.0)}) + "\n" for r in rows))
        path = root / f"arms/local_stl/seed-{seed}/summary.json"  # sample-level DP: each client's own
        summary = json.loads(path.read_text()) if path.exists() else {}
        sample_level = {"epsilon_max": 2.0 * seed, "epsilon_by_client": {"0": 2.0 * seed}}
        path.write_text(json.dumps({**summary, "privacy": {"delta": 1e-5, "sample_level": sample_level}}))
    write_report(root)
    text = (root / "report.md").read_text()
    assert "## Privacy spent" in text
    assert "| fed_mtl | 4 (min 3, max 5) | 1e-05 | 3 |" in text
    assert "| local_stl |" not in text.split("## Privacy spent")[1].split("| arm | epsilon (largest client)")[0]
    assert "| local_stl | 2 | 3 |" in text  # the mean over seeds of the largest client epsilon
    last = max(r["round"] for r in read_rows(root / "arms/fed_mtl/seed-0/metrics.jsonl") if r["split"] == "eval")
    assert f"| {last} | {2 * last:g} |" in text  # after the last round, epsilon r * (1 + 2 + 3) / 3


def test_a_sweep_over_noise_draws_each_tasks_delta_against_local_training_over_epsilon(tmp_path):
    from fedmtl.report.sweep import PRIVACY_UTILITY_PNG, write_sweep_report
    from tests.study.test_sweep import write_sweep

    root = write_sweep(
        tmp_path / "sweep",
        ["privacy.noise_multiplier"],
        [{"privacy.noise_multiplier": 0.5}, {"privacy.noise_multiplier": 2.0}],
    )
    write_sweep_report(root)
    assert not (root / PRIVACY_UTILITY_PNG).exists()  # no run spent privacy: no trade-off to draw
    for point, epsilon in ((0, 20.0), (1, 2.0)):
        for seed in (0, 1, 2):
            path = root / f"points/{point}/arms/fed_mtl/seed-{seed}/summary.json"
            summary = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps({**summary, "privacy": {"epsilon": epsilon, "delta": 1e-5}}))
    write_sweep_report(root)
    assert (root / PRIVACY_UTILITY_PNG).stat().st_size > 0
    assert "Privacy–utility" in (root / "sweep.md").read_text()
    from fedmtl.report.analysis import comparisons
    from fedmtl.report.collect import collect_study
    from fedmtl.report.privacy import privacy_utility_series

    studies = [collect_study(root / f"points/{i}") for i in (0, 1)]
    lines = privacy_utility_series([(s, comparisons(s), "") for s in studies])
    assert {line.label for line in lines} == {"fed_mtl · cls", "fed_mtl · reg"}
    assert all(line.x == [20.0, 2.0] for line in lines)
    # points that differ in another swept key are never joined into one line
    apart = privacy_utility_series([(s, comparisons(s), f"data.task_cosine={c}") for s, c in zip(studies, (1, 0))])
    assert len(apart) == 4 and all(len(line.x) == 1 for line in apart)
