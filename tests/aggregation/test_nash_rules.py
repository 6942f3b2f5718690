"""The rules inside Nash-MTL's Newton solver (``nash_weights``), each checked where it decides the outcome.

``nash_weights`` finds the positive ``alpha`` with ``(G + ridge * tr(G)/K * I) alpha = 1/alpha`` by Newton's
method on ``f(alpha) = 1/2 alpha^T M alpha - sum(log alpha)`` from ``alpha_i = 1/sqrt(G_ii)``, halving each
step until the new point is positive and has the Armijo decrease ``f_new <= f + 1e-4 t g.step``, and stopping
once ``|M alpha - 1/alpha| <= tolerance * |1/alpha|``. Checked here: the start point and the stopping rule
(an exact start takes no step, even at ``tolerance=0``; the solver stops before any step exactly when the
start meets the relative tolerance); the line search (each step is the longest halving that is positive and
has the Armijo decrease, on Gramians where the full step leaves the positive orthant and where the half step
lands on the edge of the Armijo test); the ridge (in float64, relative to ``tr(G)/K``); and the all-ones
answer for a zero Gramian. References: closed forms derived by hand, a one-dimensional root (SciPy's
``brentq``) for rank-one Gramians, and the line-search rules restated in NumPy on the recorded iterates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from fedmtl.methods.aggregation import AggregationInput, NashMTL
from fedmtl.methods.aggregation.nash_mtl import nash_weights

ARMIJO = 1e-4  # the sufficient-decrease constant of the backtracking line search


def star_gram(n: int, rho: float) -> torch.Tensor:
    """Gramian of ``n`` orthonormal gradients and one unit gradient at correlation ``rho`` with each of them
    (the first row). Unit diagonal, so ``tr(G)/K = 1`` and the solver works on ``G`` itself."""
    gram = torch.eye(n + 1, dtype=torch.float64)
    gram[0, 1:] = rho
    gram[1:, 0] = rho
    return gram


def objective(alpha: np.ndarray, m: np.ndarray) -> float:
    return float(0.5 * alpha @ m @ alpha - np.log(alpha).sum())


def rank_one_reference(r: list[float], mu: float) -> np.ndarray:
    """``beta > 0`` with ``(r r^T + mu I) beta = 1/beta``: row ``i`` reads ``mu beta_i^2 + c r_i beta_i = 1`` with
    ``c = r . beta``, so ``beta_i = 2 / (c r_i + sqrt(c^2 r_i^2 + 4 mu))`` and ``c`` is the root of the decreasing
    ``c -> r . beta(c) - c``."""
    r_ = np.asarray(r, dtype=np.float64)

    def beta(c: float) -> np.ndarray:
        return 2.0 / (c * r_ + np.sqrt((c * r_) ** 2 + 4.0 * mu))

    def excess(c: float) -> float:
        return float(r_ @ beta(c)) - c

    low, high = -1.0, 1.0
    while excess(low) < 0:
        low *= 2
    while excess(high) > 0:
        high *= 2
    return beta(brentq(excess, low, high, xtol=1e-300, rtol=8.9e-16, maxiter=500))


@pytest.fixture
def solves(monkeypatch) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Records each Newton system ``(M + diag(alpha^-2)) step = -gradient`` the solver solves: ``(A, b, step)``."""
    calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    solve = torch.linalg.solve

    def recording_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        step = solve(a, b)
        calls.append((a.numpy().copy(), b.numpy().copy(), step.numpy().copy()))
        return step

    monkeypatch.setattr(torch.linalg, "solve", recording_solve)
    return calls


def test_an_exact_start_is_returned_without_a_newton_step_even_at_zero_tolerance(solves) -> None:
    """For a diagonal Gramian ``alpha_i = 1/sqrt(G_ii)`` solves ``G alpha = 1/alpha``; with ``tr(G)/K = 4`` and
    diagonal entries 4 and 1/4 after scaling, the start's gradient is exactly zero, which meets ``tolerance=0``."""
    gram = torch.diag(torch.tensor([16.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    alpha = nash_weights(gram, ridge=0.0, tolerance=0.0)
    assert torch.equal(alpha, torch.tensor([0.25, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert solves == [], "the start already solves the bargaining condition exactly"


@pytest.mark.parametrize("margin", [1e-3, -1e-3])
def test_newton_stops_before_any_step_exactly_when_the_start_meets_the_relative_tolerance(solves, margin) -> None:
    """The stopping rule is relative, ``|G alpha - 1/alpha| <= tolerance * |1/alpha|`` (scale-free), checked before
    each step: a tolerance just above the start's relative residual returns ``1/sqrt(G_ii)`` untouched, one just
    below takes Newton steps until the rule holds."""
    gram = torch.tensor([[4.0, 1.0, 0.0], [1.0, 1.0, 0.5], [0.0, 0.5, 9.0]], dtype=torch.float64)
    g = gram.numpy()
    start = 1.0 / np.sqrt(np.diag(g))
    relative = np.linalg.norm(g @ start - 1.0 / start) / np.linalg.norm(1.0 / start)
    tolerance = relative * (1.0 + margin)
    alpha = nash_weights(gram, ridge=0.0, tolerance=tolerance).numpy()
    if margin > 0:
        assert solves == []
        np.testing.assert_allclose(alpha, start, rtol=1e-14, atol=0)
    else:
        assert len(solves) >= 1
        assert np.linalg.norm(g @ alpha - 1.0 / alpha) <= tolerance * np.linalg.norm(1.0 / alpha)


def test_the_safeguard_keeps_alpha_positive_where_the_full_newton_step_would_not(solves) -> None:
    """16 orthonormal gradients and their normalised sum: the first Newton step would take ``alpha_0`` from 1 to
    ``-4/3`` (and the half step to ``-1/6``), so the step is cut to a quarter; the solution is ``(1, 4, ..., 4) /
    sqrt(17)`` (rows: ``x + 16 y / 4 = 1/x`` and ``x / 4 + y = 1/y``)."""
    gram = star_gram(16, 0.25)
    alpha = nash_weights(gram, ridge=0.0).numpy()
    np.testing.assert_allclose(alpha, np.array([1.0] + [4.0] * 16) / np.sqrt(17.0), rtol=1e-13, atol=0)
    assert 1 <= len(solves) <= 10
    step = solves[0][2]
    assert 1.0 + step[0] <= 0 and 1.0 + step[0] / 2 <= 0 < 1.0 + step[0] / 4, "the case needs the quarter step"


@pytest.mark.parametrize(
    "rho",
    [
        0.25,  # positivity cuts the first step to t = 1/4 (see the test above)
        0.221504,  # the half step lowers f by only 3e-7 |g.step| (Armijo asks 5e-5): t = 1/4
        0.2215035,  # by 2.1e-5 |g.step| (|g.step| = 6.57): above 5e-5 / |g.step|^2, still short of 5e-5: t = 1/4
        0.221501,  # the half step lowers f by 1.2e-4 |g.step|: enough for the Armijo test at t = 1/2
    ],
)
def test_every_newton_step_is_the_longest_halving_that_stays_positive_with_armijo_decrease(solves, rho) -> None:
    """The iterates, read back from the recorded Newton systems (``diag(A) - diag(M) = alpha^-2``; here
    ``M = G``), satisfy the backtracking rule: each step is ``t * step`` with ``t`` a power of 1/2, has the Armijo
    decrease ``f_new <= f + 1e-4 t g.step``, and doubling ``t`` would leave the positive orthant or lose it."""
    gram = star_gram(16, rho)
    m = gram.numpy()
    alpha = nash_weights(gram, ridge=0.0).numpy()
    assert (alpha > 0).all()
    np.testing.assert_allclose(m @ alpha, 1.0 / alpha, rtol=1e-12)
    iterates = [(np.diag(a) - np.diag(m)) ** -0.5 for a, _, _ in solves] + [alpha]
    checked = 0
    for (_, b, step), current, new in zip(solves, iterates, iterates[1:]):
        slope = float(-b @ step)  # gradient . step < 0
        if slope > -1e-8:  # the decrease is below the objective's rounding: nothing to check
            continue
        measured = float((new - current) @ step / (step @ step))
        t = 2.0 ** round(np.log2(measured))
        assert measured == pytest.approx(t, rel=1e-9) and t <= 1, f"t = {measured} is not a power of 1/2"
        f = objective(current, m)
        assert objective(new, m) <= f + ARMIJO * t * slope + 1e-12, "an accepted step lacks the Armijo decrease"
        if t < 1:
            longer = current + 2 * t * step
            assert (longer <= 0).any() or objective(longer, m) > f + ARMIJO * 2 * t * slope, "t was cut too far"
        checked += 1
    assert checked >= 3
    first_t = float((iterates[1] - iterates[0]) @ solves[0][2] / (solves[0][2] @ solves[0][2]))
    assert first_t == pytest.approx(0.5 if rho == 0.221501 else 0.25, rel=1e-9)


def test_the_ridge_is_added_in_float64_relative_to_the_mean_diagonal() -> None:
    """Rank-one conflicting gradients with ``ridge = 0.1`` (not exact in float32): the weights solve
    ``(G + 0.1 * tr(G)/K * I) alpha = 1/alpha`` to float64 accuracy."""
    r = [1.0, -2.0, -1.0, 3.0]
    rows = torch.tensor(r, dtype=torch.float64)[:, None]
    gram = rows @ rows.T
    alpha = nash_weights(gram, ridge=0.1, tolerance=1e-14).numpy()
    mu = 0.1 * float(np.sum(np.square(r))) / len(r)
    np.testing.assert_allclose(alpha, rank_one_reference(r, mu), rtol=1e-13, atol=0)


def test_nearly_singular_conflicting_rows_still_get_the_ridge_regularised_weights() -> None:
    """Rank-one gradients of both signs with the tiny ridge 1e-8: the bargaining problem is ill-conditioned
    (``cond ~ 4e8``: the line search runs out of halvings), yet the weights are positive, finite and close to
    the regularised solution."""
    r = [1.0, -2.0, -1.0, 3.0]
    rows = torch.tensor(r, dtype=torch.float64)[:, None]
    weights = NashMTL(ridge=1e-8)(AggregationInput(rows, torch.ones(4, dtype=torch.float64))).weights.numpy()
    expected = rank_one_reference(r, 1e-8 * float(np.sum(np.square(r))) / len(r))
    assert np.isfinite(weights).all() and (weights > 0).all()
    np.testing.assert_allclose(weights, expected / expected.sum(), rtol=1e-3, atol=0)


def test_the_all_ones_answer_for_a_zero_gramian_is_on_the_gramians_device_not_the_default_one() -> None:
    gram = torch.zeros(3, 3)
    with torch.device("meta"):  # a default device other than the Gramian's
        alpha = nash_weights(gram, ridge=0.0)
    assert alpha.device == gram.device
    assert torch.equal(alpha, torch.ones(3, dtype=torch.float64))


def test_a_well_conditioned_problem_converges_in_a_few_full_newton_steps(solves) -> None:
    # rows (-1, 3) and (3, -1): M = [[10, -6], [-6, 10]], condition 4, the solution alpha = (1/2, 1/2);
    # the damped steps alone stalled here for all 200 steps (the Armijo decrease drowned in rounding)
    rows = torch.tensor([[-1.0, 3.0], [3.0, -1.0]], dtype=torch.float64)
    alpha = nash_weights(rows @ rows.T, ridge=0.0)
    assert torch.allclose(alpha, torch.full((2,), 0.5, dtype=torch.float64), rtol=1e-14, atol=0)
    assert len(solves) <= 8


def test_the_solver_follows_the_gramians_device_whatever_the_default_device() -> None:
    gram = torch.tensor([[2.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
    with torch.device("meta"):  # tensors created without a device would land on meta
        alpha = nash_weights(gram, ridge=1e-8)
    assert alpha.device.type == "cpu" and bool(torch.isfinite(alpha).all())


def test_a_ridge_that_is_not_positive_is_refused_naming_it() -> None:
    """Without a ridge, antiparallel rows have no bargaining solution: Newton's system turns singular."""
    for ridge in (-0.5, 0.0):
        with pytest.raises(ValueError, match=rf"ridge must be > 0, got {ridge}"):
            NashMTL(ridge=ridge)
    with pytest.raises(torch.linalg.LinAlgError):
        nash_weights(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), ridge=0.0)


@pytest.mark.parametrize(
    "gram",
    [
        [[1.0, 0.2], [0.2, 3.0]],
        [[1.0, -0.9, 0.1], [-0.9, 1.0, 0.0], [0.1, 0.0, 4.0]],  # conflicting rows
        [[1e-3, 0.0], [0.0, 1e3]],  # badly scaled
    ],
)
def test_nash_weights_are_found_by_a_few_safeguarded_newton_steps_to_the_tolerance(gram, solves) -> None:
    gram = torch.tensor(gram, dtype=torch.float64)
    alpha = nash_weights(gram, ridge=0.0, tolerance=1e-12)
    residual = gram @ alpha - 1.0 / alpha  # the Nash bargaining condition G alpha = 1 / alpha
    assert bool((alpha > 0).all()) and float(residual.norm()) <= 1e-11 * float((1.0 / alpha).norm())
    assert len(solves) <= 8  # Newton from alpha_i = 1 / sqrt(G_ii) converges quadratically here


def test_a_full_newton_step_that_would_cross_zero_is_searched_instead() -> None:
    """Antiparallel rows 1e-8 and -1e-2 without a ridge have no bargaining solution (the objective is
    unbounded along the null direction). Rounding then gives small Newton decrements for steps that
    leave the positive orthant; a full step there made the weights negative (-8e15 and -8e9), and a
    negative weight would stall the line search. Such a step goes through the line search instead."""
    rows = torch.tensor([1e-8, -1e-2], dtype=torch.float64)
    alpha = nash_weights(torch.outer(rows, rows), ridge=0.0)
    assert bool((alpha > 0).all())


@pytest.mark.parametrize("seed", [74, 127, 144])
def test_rows_scaled_over_six_decades_reach_the_tolerance_by_full_steps_near_the_solution(seed: int) -> None:
    """Weights below 1 in the scaled problem: the line search alone stalls once its Armijo decrease is
    below the objective's rounding (residual 1e-9 to 1e-8 here); full steps there reach the tolerance."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    rows = rows * torch.logspace(-3, 3, 8, dtype=torch.float64).unsqueeze(1)
    gram = rows @ rows.T
    alpha = nash_weights(gram, ridge=1e-8)
    scale = float(torch.trace(gram)) / 8
    m = gram / scale + 1e-8 * torch.eye(8, dtype=torch.float64)  # the scaled problem the solver works on
    scaled = alpha * scale**0.5
    residual = m @ scaled - 1.0 / scaled
    assert float(residual.norm()) <= 1e-12 * float((1.0 / scaled).norm())
