"""Secure aggregation (Flower's SecAgg+; ``privacy.secure_aggregation``): the encoder it gives equals plain
FedAvg's up to the protocol's quantization, what the clients send carries no update in the clear, clients
that fail mid-protocol leave the others' sum intact, values beyond the clipping range are counted, and
every aggregator or lever that needs one client's update is refused before training."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from flwr.app import Message

from fedmtl.config.expansion import arm_config
from fedmtl.config.loading import load_config
from fedmtl.config.study import ArmSpec
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError, FederationError
from fedmtl.core.files import read_rows
from fedmtl.local.client import LocalClient
from fedmtl.model.networks import initial_shared_state
from server.engines.secure import message_bytes
from tests.helpers import TINY_OVERRIDES
from tests.loopback import LoopbackGrid, run_config, serve

SECURE = "privacy.secure_aggregation.enabled=true"
ONE_ROUND = (*TINY_OVERRIDES, "rounds=1", "eval_every=1", "clients.sample_imbalance=0.8")
CLIPPING_RANGE, LEVELS = 8.0, 4194304  # the config's defaults


class WireTap(LoopbackGrid):
    """Every message the clients send back."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[Message] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.replies += replies
        return replies


def serve_run(tmp_path: Path, name: str, *overrides: str, grid_type: type[LoopbackGrid] = LoopbackGrid):
    run_dir = tmp_path / name
    config = run_config(*overrides, f"output.run_dir={run_dir}")
    grid = grid_type(config, 3, tmp_path / f"{name}-state")
    serve(grid, config)
    return run_dir, grid


def encoder(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "encoder.pt", weights_only=True)


def largest_difference(a: Path, b: Path) -> float:
    first, second = encoder(a), encoder(b)
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def quantization_bound(run_dir: Path, contributors: Iterable[int], weighted: bool = True) -> float:
    """SecAgg+'s error on the weighted mean: each contributor's weighted value is stochastically rounded to
    a step of 2 c / T (error below one step), and the sum is divided by the weights' sum, each weight taken
    over the largest any participant has (the bound the server asks for)."""
    cfg = load_config(run_dir / "config.yaml")
    sizes = {c: LocalClient.for_client(cfg, c).num_train_examples() for c in range(cfg.clients.count)}
    largest = max(sizes.values())
    weights = [sizes[c] / largest if weighted else 1.0 for c in contributors]
    return len(weights) * 2 * CLIPPING_RANGE / LEVELS / sum(weights)


@pytest.mark.parametrize("weighted", [True, False])
def test_a_secure_round_gives_plain_fedavgs_encoder_up_to_the_quantization(tmp_path, weighted):
    aggregator = f"server.aggregator={{name: fedavg, weighted: {str(weighted).lower()}}}"
    plain, _ = serve_run(tmp_path, "plain", *ONE_ROUND, aggregator)
    secure, _ = serve_run(tmp_path, "secure", *ONE_ROUND, aggregator, SECURE)
    sizes = {row["num_examples"] for row in read_rows(secure / "clients.jsonl")}
    assert len(sizes) > 1, "the clients must hold different amounts of data for the weights to matter"
    assert 0 < largest_difference(plain, secure) <= quantization_bound(secure, range(3), weighted)
    [row] = read_rows(secure / "server.jsonl")
    assert row["secure_aggregation"]["contributors"] == 3 and row["secure_aggregation"]["clipped_values"] == 0
    assert row["clients"] is None and row["update_norms"] is None  # the server saw no client's update
    assert row["secure_aggregation"]["clients"] == [0, 1, 2]  # who contributed, from their reports
    cfg = load_config(secure / "config.yaml")
    start, end = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed), encoder(secure)
    moved = torch.cat([(start[k] - end[k]).reshape(-1) for k in sorted(end)]).norm().item()  # server lr 1
    recorded = row["secure_aggregation"]["mean_update_norm"]
    assert recorded == pytest.approx(moved, abs=5e-7) and recorded == round(recorded, 6)


def test_no_client_reply_carries_its_update_in_the_clear(tmp_path):
    run_dir, grid = serve_run(tmp_path, "secure", *ONE_ROUND, SECURE, grid_type=WireTap)
    training = [m for m in grid.replies if m.metadata.message_type == "train"]
    assert len(training) == 4 * 3  # SecAgg+'s four stages, three clients
    for reply in training:
        assert not reply.has_error()
        assert all(len(record) == 0 for record in reply.content.array_records.values()), "an array left a client"
    masked = [m for m in training if "fitres.metrics" in m.content.config_records]
    assert len(masked) == 3 and all(message_bytes(m) > 0 for m in masked)
    [row] = read_rows(run_dir / "server.jsonl")
    assert row["bytes_up"] == sum(message_bytes(m) for m in training)


def test_a_client_that_fails_mid_round_drops_out_and_the_others_sum_is_kept(tmp_path):
    # client_error_rate 0.5 with seed 1: exactly one of the three clients (client 0) raises in round 1 (asserted)
    failing = (*ONE_ROUND, "seed=1", "faults.client_error_rate=0.5", "server.min_fit_fraction=0.5")
    run_dir, _ = serve_run(tmp_path, "secure", *failing, SECURE)
    [row] = read_rows(run_dir / "server.jsonl")
    assert row["failures"] == 1 and row["secure_aggregation"]["contributors"] == 2
    reference, _ = serve_run(tmp_path, "plain", *failing)
    [plain_row] = read_rows(reference / "server.jsonl")
    assert plain_row["failures"] == 1
    assert largest_difference(reference, run_dir) <= quantization_bound(run_dir, [1, 2])


def test_values_beyond_the_clipping_range_are_counted(tmp_path):
    run_dir, _ = serve_run(tmp_path, "secure", *ONE_ROUND, SECURE, "privacy.secure_aggregation.clipping_range=1e-4")
    [row] = read_rows(run_dir / "server.jsonl")
    assert row["secure_aggregation"]["clipped_values"] > 0


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["server.aggregator=upgrad"], "server.aggregator"),
        (["server.aggregator=median"], "server.aggregator"),
        (["privacy.clip_norm=1.0", "server.aggregator={name: fedavg, weighted: false}"], "privacy.noise_at"),
        (["server.personalisation={name: mixed}"], "server.personalisation"),
        (["server.grouping={name: affinity, warmup_rounds: 1}"], "server.grouping"),
        (["server.cohorts=task"], "server.cohorts"),
        (["server.client_affinity_every=2"], "server.client_affinity_every"),
        (["server.max_update_norm=10"], "server.max_update_norm"),
        (["server.fraction_fit=0.3"], "server.fraction_fit"),
    ],
)
def test_what_needs_one_clients_update_is_refused_under_secure_aggregation(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*TINY_OVERRIDES, SECURE, *overrides])
    assert err.value.path == key, str(err.value)


def test_local_noise_goes_with_secure_aggregation_and_local_training_drops_both():
    cfg = load_config(None, [*TINY_OVERRIDES, SECURE, "privacy.clip_norm=1.0", "privacy.noise_at=client"])
    assert cfg.privacy.local and cfg.privacy.secure_aggregation.enabled
    local = arm_config(cfg, ArmSpec("local_stl", base="local_stl"))  # nothing is released: no mechanism
    assert not local.privacy.enabled and not local.privacy.secure_aggregation.enabled


def test_the_reports_a_legacy_reply_carries_round_trip():
    reports = [{protocol.CLIENT_ID: 2, "train/a/loss": 0.5}, {protocol.CLIENT_ID: 3, "x": "y"}]
    assert protocol.decode_reports(protocol.encode_reports(reports)) == reports
    assert json.dumps(protocol.encode_reports(reports))  # flat and serialisable


def test_a_round_whose_clients_all_fail_stops_with_their_reason(tmp_path, caplog):
    # client_error_rate 0.5 with seed 2: all three clients raise in round 1
    with pytest.raises(FederationError, match="only 0 of 3 sampled clients"):
        serve_run(tmp_path, "secure", *ONE_ROUND, "seed=2", "faults.client_error_rate=0.5", SECURE)
    [row] = read_rows(tmp_path / "secure" / "server.jsonl")
    assert row["failures"] == 3 and row.get("secure_aggregation") is None
    failed = [r.getMessage() for r in caplog.records if "a participant failed" in r.getMessage()]
    assert len(failed) == 3 and all("injected error" in m and "halted" in m for m in failed), failed


@pytest.mark.parametrize("across_tasks", [False, True])
def test_federated_heads_average_per_task_under_secure_aggregation_as_in_the_clear(tmp_path, across_tasks):
    heads = (
        "server.federate_heads=true",
        f"server.heads_across_tasks={str(across_tasks).lower()}",
        "data.tasks=[{name: a, kind: regression}, {name: b, kind: regression}, {name: c, kind: regression}]",
        "data.task_cosine=0.5",
        "clients.tasks=[[a, b], [b, c], [c, a]]",  # one head shape for heads_across_tasks
    )
    plain, _ = serve_run(tmp_path, "plain", *ONE_ROUND, *heads)
    secure, _ = serve_run(tmp_path, "secure", *ONE_ROUND, *heads, SECURE)
    assert largest_difference(plain, secure) <= quantization_bound(secure, range(3))
    evaluated = [
        [row for row in read_rows(run / "metrics.jsonl") if row["split"] == "eval" and row["round"] == 1]
        for run in (plain, secure)
    ]
    assert len(evaluated[0]) == len(evaluated[1]) > 0
    for clear, masked in zip(*evaluated):  # every task's loss with the averaged heads, to the quantization
        assert (clear["client"], clear["task"]) == (masked["client"], masked["task"])
        assert masked["loss"] == pytest.approx(clear["loss"], rel=1e-4)


def test_a_client_whose_update_is_not_finite_drops_out_instead_of_corrupting_the_sum(tmp_path):
    # client_nan_rate 0.5 with seed 1: client 0's update is NaN in round 1 (the same draw as the error test)
    run_dir, _ = serve_run(tmp_path, "secure", *ONE_ROUND, "seed=1", "faults.client_nan_rate=0.5", SECURE)
    [row] = read_rows(run_dir / "server.jsonl")
    assert row["failures"] == 1 and row["secure_aggregation"]["contributors"] == 2
    assert all(torch.isfinite(v).all() for v in encoder(run_dir).values())
