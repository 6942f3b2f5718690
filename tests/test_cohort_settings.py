"""What the server algorithm builds each cohort from: every server setting reaches every cohort's
updater, and local training (``server.cohorts: participant``) adopts each member's encoder as it is."""

from __future__ import annotations

import torch

from fedmtl.config.experiment import sample_size
from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.federation.algorithm import ServerAlgorithm
from fedmtl.federation.screening import Accepted
from tests.helpers import tiny_overrides


def algorithm(*overrides: str) -> ServerAlgorithm:
    return ServerAlgorithm(load_config(None, [*tiny_overrides(4), *overrides]))


def test_the_gramian_precision_reaches_every_cohort() -> None:
    assert {c.updater.gramian_precision for c in algorithm().cohorts} == {"float32"}
    chosen = algorithm(
        "server.gramian_precision=float64", "server.cohorts={name: task}", "clients.participants=client_tasks"
    )
    assert len(chosen.cohorts) > 1 and {c.updater.gramian_precision for c in chosen.cohorts} == {"float64"}


def test_central_privacy_counts_the_clients_a_cohort_samples_each_round() -> None:
    """Adaptive clipping's count noise defaults to (clients per round) / 20 (Andrew et al.)."""
    server = algorithm(
        "privacy.noise_at=server",
        "privacy.clip_norm=1.0",
        "server.fraction_fit=0.5",
        "server.aggregator={name: fedavg, weighted: false}",
    )
    (cohort,) = server.cohorts
    assert cohort.updater.privacy is not None
    assert cohort.updater.privacy.count_noise == sample_size(4, 0.5) / 20 == 0.1


def test_local_training_adopts_each_members_encoder_exactly_whatever_the_server_optimizer() -> None:
    server = algorithm("server.cohorts={name: participant}", "server.optimizer={name: sgd, lr: 0.5}")
    assert len(server.cohorts) == 4 and all(c.adopts for c in server.cohorts)
    cohort = server.cohorts[0]
    trained = {k: v + 0.125 for k, v in cohort.global_state().items()}
    (member,) = cohort.members
    report = {protocol.NUM_EXAMPLES: 3.0}
    assert cohort.step([Accepted(member.index, member.client_id, trained, {}, report)]) is None
    for key, value in cohort.global_state().items():
        assert torch.equal(value, trained[key])  # not the server optimizer's half step


def test_an_updater_told_no_clients_per_round_counts_one() -> None:
    from fedmtl.config.sections import PrivacyConfig, ServerOptimizerConfig
    from fedmtl.federation.server_update import ServerUpdater
    from fedmtl.methods.aggregation import FedAvg

    privacy = PrivacyConfig(noise_at="server", clip_norm=1.0)
    updater = ServerUpdater(
        {"w": torch.zeros(2)}, FedAvg(weighted=False), ServerOptimizerConfig(), seed=0, central_privacy=privacy
    )
    assert updater.privacy is not None and updater.privacy.count_noise == 1 / 20


def test_a_checkpoint_keeps_group_membership_only_when_groups_can_split() -> None:
    """Fixed cohorts come from the config again on resume: a million clients' membership is not written."""
    assert algorithm().state_dict()["groups"] is None
    assert algorithm("server.cohorts={name: participant}").state_dict()["groups"] is None
    splitting = algorithm("server.grouping={name: affinity, warmup_rounds: 1}", "server.client_affinity_every=1")
    assert splitting.grouping.splits and splitting.state_dict()["groups"] == {"all": [0, 1, 2, 3]}
