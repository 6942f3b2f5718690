"""Property-based tests (Hypothesis) of the loss balancers: for any losses and histories, the weights
keep the invariants each method promises (GradNorm's weights are positive and DWA's non-negative,
both summing to the number of tasks; uncertainty weighting's terms are its published formula; static weights scale the
losses), against formulas written here independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedmtl.methods.balancing import DWA, GradNorm, Static, Uncertainty
from fedmtl.methods.balancing.dwa import BEFORE, PREVIOUS, dwa_weights
from fedmtl.methods.balancing.gradnorm import gradnorm_step

LOSSES = st.floats(1e-4, 1e4, allow_nan=False, allow_subnormal=False)


def tasks(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


@given(values=st.lists(LOSSES, min_size=1, max_size=5), weights=st.lists(st.floats(0, 10), min_size=5, max_size=5))
def test_static_terms_are_the_configured_weights_times_the_losses(values, weights):
    names = tasks(len(values))
    configured = dict(zip(names, weights))
    round_ = Static(weights=configured).start(names, {})
    terms = round_.terms({t: torch.tensor(v, dtype=torch.float64) for t, v in zip(names, values)})
    for t, v in zip(names, values):
        assert float(terms[t]) == pytest.approx(configured[t] * v)
    assert round_.weights() == pytest.approx(configured)


@given(values=st.lists(LOSSES, min_size=1, max_size=5), log_variance=st.floats(-5, 5))
def test_uncertainty_terms_follow_kendall_et_al(values, log_variance):
    """``0.5 (exp(-s) L + s)`` per task, reported weight ``0.5 exp(-s)``, state round-tripping."""
    names = tasks(len(values))
    round_ = Uncertainty(initial_log_variance=log_variance).start(names, {})
    terms = round_.terms({t: torch.tensor(v) for t, v in zip(names, values)})
    for t, v in zip(names, values):
        expected = 0.5 * (math.exp(-log_variance) * v + log_variance)
        assert float(terms[t].detach()) == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert round_.weights()[t] == pytest.approx(0.5 * math.exp(-log_variance), rel=1e-5)
    resumed = Uncertainty(initial_log_variance=0.0).start(names, round_.state())
    assert resumed.weights() == pytest.approx(round_.weights())


@given(
    weights=arrays(np.float64, st.integers(2, 5), elements=st.floats(0.01, 5.0)),
    data=st.data(),
    alpha=st.floats(0.0, 3.0),
    lr=st.floats(1e-4, 1.0),
)
def test_gradnorm_step_keeps_weights_positive_and_summing_to_k(weights, data, alpha, lr):
    k = len(weights)
    norms = data.draw(arrays(np.float64, k, elements=st.floats(1e-3, 1e3)))
    ratios = data.draw(arrays(np.float64, k, elements=st.floats(1e-3, 1e3)))
    updated = gradnorm_step(torch.tensor(weights), torch.tensor(norms), torch.tensor(ratios), alpha, lr).numpy()
    assert np.all(updated > 0) and updated.sum() == pytest.approx(k)
    # The reference: the subgradient of sum |w_i n_i - target_i| is sign(w_i n_i - target_i) n_i (target
    # held constant); one step, clamped at 1e-4, renormalised to sum K.
    target = (weights * norms).mean() * (ratios / ratios.mean()) ** alpha
    step = np.maximum(weights - lr * np.sign(weights * norms - target) * norms, 1e-4)
    np.testing.assert_allclose(updated, step * k / step.sum(), rtol=1e-9)


@given(
    previous=arrays(np.float64, st.integers(1, 5), elements=LOSSES),
    data=st.data(),
    temperature=st.floats(0.1, 10.0),
)
def test_dwa_weights_are_k_times_a_softmax_of_the_loss_rates(previous, data, temperature):
    k = len(previous)
    before = data.draw(arrays(np.float64, k, elements=LOSSES))
    weights = dwa_weights(torch.tensor(previous), torch.tensor(before), temperature).numpy()
    rates = previous / before
    exponent = np.exp((rates - rates.max()) / temperature)  # softmax, shifted against overflow
    expected = k * exponent / exponent.sum()
    np.testing.assert_allclose(weights, expected, rtol=1e-9)
    # non-negative (a weight underflows to 0 only when rates differ by hundreds of temperatures)
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(k)
    # the task whose loss fell least (largest rate) gets the largest weight
    assert weights.argmax() in np.flatnonzero(rates == rates.max())


@given(history=st.lists(st.lists(LOSSES, min_size=3, max_size=3), min_size=1, max_size=4))
def test_dwa_uses_the_last_two_rounds_of_history_and_ones_before(history):
    names, state = tasks(3), {}
    for means in history:
        round_ = DWA().start(names, state)
        round_.end_round(dict(zip(names, means)))
        state = round_.state()
    weights = DWA().start(names, state).weights()
    if len(history) < 2:
        assert weights == {t: 1.0 for t in names}
    else:
        expected = dwa_weights(torch.tensor(history[-1]), torch.tensor(history[-2]), 2.0)
        assert list(weights.values()) == pytest.approx(expected.tolist())
        assert {k for k in state} == {p + t for p in (PREVIOUS, BEFORE) for t in names}


@given(values=st.lists(LOSSES, min_size=2, max_size=4))
def test_gradnorm_round_weights_sum_to_k_after_every_update(values):
    names = tasks(len(values))
    round_ = GradNorm().start(names, {})
    shared = torch.nn.Parameter(torch.ones(3))
    losses = {t: (shared * (i + 1)).sum() * v for i, (t, v) in enumerate(zip(names, values))}
    round_.terms(losses)
    round_.after_backward(losses, lambda loss: torch.autograd.grad(loss, shared, retain_graph=True)[0])
    weights = np.array(list(round_.weights().values()))
    assert np.all(weights > 0) and weights.sum() == pytest.approx(len(values))
