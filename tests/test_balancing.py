"""Each balancing method against its published formula on small hand-checkable cases."""

from __future__ import annotations

import math

import pytest
import torch

from fedmtl.methods.balancing import DWA, GradNorm, Static, Uncertainty
from fedmtl.methods.balancing.dwa import dwa_weights
from fedmtl.methods.balancing.gradnorm import gradnorm_step


def test_static_weights_scale_losses():
    round_ = Static(weights={"a": 2.0}).start(["a", "b"], {})
    terms = round_.terms({"a": torch.tensor(3.0), "b": torch.tensor(5.0)})
    assert float(terms["a"]) == 6.0 and float(terms["b"]) == 5.0
    assert round_.weights() == {"a": 2.0, "b": 1.0}


def test_uncertainty_weights_reach_the_closed_form_optimum_on_fixed_losses():
    """min_s 0.5 (exp(-s) L + s) has s* = log L, i.e. weight 0.5 / L."""
    losses = {"a": torch.tensor(0.5), "b": torch.tensor(4.0)}
    round_ = Uncertainty().start(["a", "b"], {})
    optimizer = torch.optim.SGD(round_.parameters(), lr=0.2)
    for _ in range(2000):
        optimizer.zero_grad()
        torch.stack(list(round_.terms(losses).values())).sum().backward()
        optimizer.step()
    state = round_.state()
    assert float(state["log_variance.a"]) == pytest.approx(math.log(0.5), abs=1e-3)
    assert float(state["log_variance.b"]) == pytest.approx(math.log(4.0), abs=1e-3)
    assert round_.weights()["b"] == pytest.approx(0.5 / 4.0, rel=1e-3)


def test_uncertainty_state_resumes():
    state = Uncertainty().start(["a"], {}).state()
    state["log_variance.a"] = torch.tensor(1.5)
    assert Uncertainty().start(["a"], state).weights()["a"] == pytest.approx(0.5 * math.exp(-1.5))


def test_gradnorm_step_matches_the_formula():
    """Oracle: d/dw_i sum_j |w_j g_j - T_j| = sign(w_i g_i - T_i) g_i with T held constant."""
    w, g, ratios, alpha, lr = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.5]), 1.5, 0.1
    weighted = w * g
    relative = ratios / ratios.mean()
    target = weighted.mean() * relative**alpha
    expected = w - lr * torch.sign(weighted - target) * g
    expected = expected * (2 / expected.sum())
    assert torch.allclose(gradnorm_step(w, g, ratios, alpha, lr), expected)


def test_gradnorm_weights_sum_to_k_and_move_towards_the_slower_task():
    # equal gradient norms; task 0 trains slower (its loss ratio L/L(0) stays higher)
    w = torch.ones(3)
    for _ in range(20):
        w = gradnorm_step(w, torch.ones(3), torch.tensor([0.9, 0.5, 0.5]), alpha=1.5, lr=0.05)
    assert float(w.sum()) == pytest.approx(3.0)
    assert w[0] > 1.0 > w[1] and w[1] == pytest.approx(w[2])


def test_gradnorm_round_updates_only_its_weights_not_the_network_gradient():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(8, 3)
    losses = {"a": layer(x)[:, 0].pow(2).mean(), "b": (layer(x)[:, 1] - 1).pow(2).mean() * 5}
    round_ = GradNorm(alpha=1.5, lr=0.1).start(["a", "b"], {})
    torch.stack(list(round_.terms(losses).values())).sum().backward(retain_graph=True)
    before = layer.weight.grad.clone()

    round_.after_backward(losses, lambda loss: torch.autograd.grad(loss, layer.weight, retain_graph=True)[0])

    assert torch.equal(layer.weight.grad, before), "GradNorm must not leak into the network's gradient"
    weights = round_.weights()
    assert sum(weights.values()) == pytest.approx(2.0)
    state = round_.state()
    assert set(state) == {
        "gradnorm_weight.a",
        "gradnorm_weight.b",
        "gradnorm_initial_loss.a",
        "gradnorm_initial_loss.b",
    }


def test_dwa_formula_and_history():
    previous, before = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0])
    expected = 2 * torch.exp(torch.tensor([0.5, 1.0]) / 2.0) / torch.exp(torch.tensor([0.5, 1.0]) / 2.0).sum()
    assert torch.allclose(dwa_weights(previous, before, 2.0), expected)

    dwa = DWA(temperature=2.0)
    first = dwa.start(["a", "b"], {})
    assert first.weights() == {"a": 1.0, "b": 1.0}
    first.end_round({"a": 2.0, "b": 2.0})
    second = dwa.start(["a", "b"], first.state())
    assert second.weights() == {"a": 1.0, "b": 1.0}, "needs two rounds of history"
    second.end_round({"a": 1.0, "b": 2.0})
    third = dwa.start(["a", "b"], second.state())
    assert list(third.weights().values()) == pytest.approx(expected.tolist())


def test_gradnorm_round_by_hand_with_one_task_absent():
    """Tasks a, b, c; c has no loss this round. Weights (1.2, 0.5, 1.3), initial losses a 0.5, b 0.25.
    Losses a 0.4, b 0.3: ratios (0.8, 1.2), relative rates (0.8, 1.2). Gradient norms 1 and 2.4, so
    the weighted norms are (1.2, 1.2), their mean 1.2 and the targets (alpha = 1) (0.96, 1.44): the L1
    gradient is (+1, -2.4), the step (lr 0.1) gives (1.1, 0.74); renormalised, a and b keep their
    share 1.7 of the total: (1.1, 0.74) * 1.7 / 1.84. c keeps 1.3."""
    state = {
        "gradnorm_weight.a": torch.tensor(1.2),
        "gradnorm_weight.b": torch.tensor(0.5),
        "gradnorm_weight.c": torch.tensor(1.3),
        "gradnorm_initial_loss.a": torch.tensor(0.5),
        "gradnorm_initial_loss.b": torch.tensor(0.25),
    }
    round_ = GradNorm(alpha=1.0, lr=0.1).start(["a", "b", "c"], state)
    losses = {"a": torch.tensor(0.4), "b": torch.tensor(0.3)}
    terms = round_.terms(losses)
    assert set(terms) == {"a", "b"}
    assert float(terms["a"]) == pytest.approx(1.2 * 0.4) and float(terms["b"]) == pytest.approx(0.5 * 0.3)
    gradients = {id(losses["a"]): torch.tensor([0.6, 0.8]), id(losses["b"]): torch.tensor([2.4, 0.0])}
    round_.after_backward(losses, lambda loss: gradients[id(loss)])
    weights = round_.weights()
    assert weights["a"] == pytest.approx(1.1 * 1.7 / 1.84, rel=1e-6)
    assert weights["b"] == pytest.approx(0.74 * 1.7 / 1.84, rel=1e-6)
    assert weights["c"] == pytest.approx(1.3)


def test_gradnorm_round_with_fewer_than_two_losses_keeps_its_weights():
    round_ = GradNorm().start(["a", "b"], {})
    losses = {"a": torch.tensor(0.4)}
    round_.terms(losses)
    round_.after_backward(losses, lambda loss: torch.tensor([1.0]))
    assert round_.weights() == {"a": 1.0, "b": 1.0}


def test_gradnorm_settings():
    GradNorm(alpha=0.0)  # no balancing pressure: allowed
    GradNorm(alpha=0.5)
    for alpha, lr in [(-0.1, 0.025), (1.5, 0.0), (1.5, -1.0)]:
        with pytest.raises(ValueError) as raised:
            GradNorm(alpha=alpha, lr=lr)
        assert str(raised.value) == "need alpha >= 0 and lr > 0"


def test_dwa_settings():
    DWA(temperature=0.5)  # below 1: sharper weights, allowed
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError) as raised:
            DWA(temperature=temperature)
        assert str(raised.value) == f"temperature must be > 0, got {temperature}"


def test_dwa_weighs_each_tasks_loss_by_its_own_weight():
    state = {"dwa_loss_prev.a": torch.tensor(1.0), "dwa_loss_before.a": torch.tensor(2.0)}
    state |= {"dwa_loss_prev.b": torch.tensor(2.0), "dwa_loss_before.b": torch.tensor(2.0)}
    weights = 2 * torch.softmax(torch.tensor([0.5, 1.0]) / 2.0, dim=0)  # rates 0.5 and 1, T = 2
    terms = DWA(temperature=2.0).start(["a", "b"], state).terms({"b": torch.tensor(3.0), "a": torch.tensor(5.0)})
    assert terms["a"].item() == pytest.approx(weights[0].item() * 5.0) and terms["b"].item() == pytest.approx(
        weights[1].item() * 3.0
    )
