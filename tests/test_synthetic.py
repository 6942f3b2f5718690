"""The synthetic suite: the relatedness knob controls task cosines; data is seeded and honest."""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl.config.loading import load_config
from fedmtl.data.partition import client_plan
from fedmtl.data.suites import ClientPlan, SyntheticSuite, SyntheticTask

TWO_TASKS = (SyntheticTask("a"), SyntheticTask("b"))


@pytest.mark.parametrize("rho", [-0.9, -0.5, 0.0, 0.3, 0.95, 1.0])
def test_scalar_relatedness_sets_the_cosine_between_task_vectors(rho):
    world = SyntheticSuite(tasks=TWO_TASKS, task_cosine=rho, latent_dim=6).world(seed=3)
    a, b = world.theta
    assert np.linalg.norm(a) == pytest.approx(1.0) and np.linalg.norm(b) == pytest.approx(1.0)
    assert a @ b == pytest.approx(rho, abs=1e-9)


def test_cosine_matrix_is_reproduced_exactly():
    suite = SyntheticSuite()
    theta = suite.world(seed=0).theta
    assert np.allclose(theta @ theta.T, np.asarray(suite.task_cosine), atol=1e-9)


@pytest.mark.parametrize("rho", [-0.8, 0.0, 0.6])
def test_targets_correlate_as_configured_without_nonlinearity(rho):
    """With no sinusoids and no noise, y_t = theta_t . z, so corr(y_a, y_b) = cos(theta_a, theta_b)."""
    world = SyntheticSuite(tasks=TWO_TASKS, task_cosine=rho, nonlinearity=0.0).world(seed=1)
    latent = np.random.default_rng(0).standard_normal((200_000, world.suite.latent_dim))
    correlation = np.corrcoef(world.signal(0, latent), world.signal(1, latent))[0, 1]
    assert correlation == pytest.approx(rho, abs=0.01)


@pytest.mark.parametrize("rho", [-1.0, -0.6, 0.0, 0.5, 0.9])
def test_relu_link_targets_correlate_as_the_arc_cosine_kernel(rho):
    """y_t = max(theta_t . z, 0): corr = (sin phi + (pi - phi) cos phi - 1) / (pi - 1), phi = arccos rho."""
    world = SyntheticSuite(tasks=TWO_TASKS, task_cosine=rho, nonlinearity=0.0, link="relu").world(seed=1)
    latent = np.random.default_rng(0).standard_normal((200_000, world.suite.latent_dim))
    phi = np.arccos(rho)
    expected = (np.sin(phi) + (np.pi - phi) * np.cos(phi) - 1) / (np.pi - 1)
    correlation = np.corrcoef(world.signal(0, latent), world.signal(1, latent))[0, 1]
    assert correlation == pytest.approx(expected, abs=0.01)


def test_relu_link_opposed_task_is_not_linear_in_its_partner():
    """A linear head on max(u, 0) explains corr^2 = 0.467^2 = 22 % of max(-u, 0)'s variance: the sign stays."""
    world = SyntheticSuite(tasks=TWO_TASKS, task_cosine=-1.0, nonlinearity=0.0, link="relu").world(seed=1)
    latent = np.random.default_rng(0).standard_normal((100_000, world.suite.latent_dim))
    features = np.stack([world.signal(0, latent), np.ones(len(latent))], axis=1)
    target = world.signal(1, latent)
    residual = target - features @ np.linalg.lstsq(features, target, rcond=None)[0]
    assert 1 - residual.var() / target.var() == pytest.approx(0.218, abs=0.01)


def test_opposed_tasks_are_not_a_sign_flip_when_nonlinear():
    world = SyntheticSuite(tasks=TWO_TASKS, task_cosine=-1.0, nonlinearity=0.5).world(seed=1)
    latent = np.random.default_rng(0).standard_normal((10_000, world.suite.latent_dim))
    assert not np.allclose(world.signal(0, latent), -world.signal(1, latent), atol=0.1)


def test_same_seed_same_data_and_clients_differ():
    suite = SyntheticSuite()
    plan = ClientPlan(0, 2, ("anchor", "orthogonal"), (50, 40), (10, 10))
    first, again = suite.client_data(7, plan), suite.client_data(7, plan)
    assert (first.train["anchor"].x == again.train["anchor"].x).all()
    other = suite.client_data(7, ClientPlan(1, 2, plan.tasks, plan.train_samples, plan.eval_samples))
    assert not (first.train["anchor"].x == other.train["anchor"].x).all()
    assert len(first.train["anchor"]) == 50 and len(first.eval["orthogonal"]) == 10
    assert not (first.train["anchor"].x[:10] == first.eval["anchor"].x).all()


def test_classification_classes_are_balanced_at_population_level():
    suite = SyntheticSuite(tasks=(SyntheticTask("c", "classification", 0.0, 3),), task_cosine=0.0, client_shift=0.0)
    data = suite.client_data(0, ClientPlan(0, 1, ("c",), (6000,), (1,)))
    frequencies = np.bincount(data.train["c"].y.numpy(), minlength=3) / 6000
    assert np.allclose(frequencies, 1 / 3, atol=0.03)


def test_client_shift_moves_client_input_means_apart():
    def mean_gap(shift: float) -> float:
        suite = SyntheticSuite(client_shift=shift)
        means = [
            suite.client_data(0, ClientPlan(c, 2, ("anchor",), (4000,), (1,))).train["anchor"].x.mean(0) for c in (0, 1)
        ]
        return float((means[0] - means[1]).norm())

    assert mean_gap(2.0) > 4 * mean_gap(0.0)


def test_partition_holds_task_subsets_and_imbalance():
    cfg = load_config()
    plans = [client_plan(cfg.clients, cfg.data, cfg.seed, c) for c in range(cfg.clients.count)]
    assert len({p.tasks for p in plans}) > 1, "clients should hold different task subsets"
    assert all(len(p.tasks) == cfg.clients.tasks_per_client for p in plans)
    covered = {t for p in plans for t in p.tasks}
    assert covered == set(cfg.data.task_names())
    sizes = [p.train_samples[0] for p in plans if p.tasks[0] == "anchor"]
    assert len(set(sizes)) == len(sizes), "sample_imbalance should give clients different sizes"
    poor = [n for p in plans for t, n in zip(p.tasks, p.train_samples) if t == "aligned"]
    rich = [n for p in plans for t, n in zip(p.tasks, p.train_samples) if t == "anchor"]
    assert np.mean(poor) < 0.5 * np.mean(rich), "task_sample_scale makes 'aligned' data-poor"
