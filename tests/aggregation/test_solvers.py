"""The small float64 solvers shared by the Gramian-based aggregators, against hand-computed solutions.

Oracles: closed forms of the min-norm point for diagonal Gramians (``w_i`` proportional to
``1 / g_ii`` on the simplex; clipped "water filling" ``w_i = clip(t / g_ii, lower_i, upper_i)`` in a
box, ``t`` found by bisection); central finite differences of the objective for the gradient that
reaches SLSQP; and the documented contracts (exactness inside the box, the ``1e-12`` slack at its
faces, clipping and rescaling of the returned point, a warning attributed to the caller).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedmtl.methods.aggregation import _solvers


def water_filling(diagonal: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``argmin sum_i d_i w_i^2`` over ``sum w = 1, lower <= w <= upper``: ``w_i = clip(t / d_i)``."""
    low, high = 0.0, 1e6
    for _ in range(200):
        t = (low + high) / 2
        low, high = (t, high) if np.clip(t / diagonal, lower, upper).sum() < 1 else (low, t)
    return np.clip(low / diagonal, lower, upper)


def test_mean_diagonal_scale_is_trace_over_k_and_one_for_a_zero_gramian() -> None:
    assert _solvers.mean_diagonal_scale(np.diag([1.0, 2.0, 3.0, 6.0])) == 3.0
    assert _solvers.mean_diagonal_scale(np.zeros((3, 3))) == 1.0


def test_weights_are_float64_on_the_device_of_the_reference_tensor() -> None:
    weights = _solvers.to_weights(np.array([0.25, 0.75], dtype=np.float32), torch.empty(2, device="meta"))
    assert weights.dtype == torch.float64
    assert weights.device.type == "meta"
    torch.testing.assert_close(
        _solvers.to_weights(np.array([0.25, 0.75], dtype=np.float32), torch.empty(2)),
        torch.tensor([0.25, 0.75], dtype=torch.float64),
        rtol=0,
        atol=0,
    )


def test_one_row_gets_all_the_weight() -> None:
    w = _solvers.min_norm_simplex(np.array([[4.0]]))
    assert w.shape == (1,)
    assert w[0] == 1.0


@pytest.mark.parametrize("diagonal", [[1.0, 4.0], [1.0, 1.0], [2.0, 3.0, 6.0], [1e-3, 5.0, 7.0, 0.5]])
def test_min_norm_point_of_orthogonal_rows_is_proportional_to_inverse_squared_norms(diagonal: list[float]) -> None:
    d = np.array(diagonal)
    w = _solvers.min_norm_simplex(np.diag(d))
    np.testing.assert_allclose(w, (1 / d) / (1 / d).sum(), rtol=0, atol=1e-12)
    assert abs(w.sum() - 1) < 1e-14


def test_min_norm_point_at_a_vertex() -> None:
    # rows (1, 0) and (1, 1): ||w g1 + (1 - w) g2||^2 = 1 + (1 - w)^2 is smallest at w = 1
    w = _solvers.min_norm_simplex(np.array([[1.0, 1.0], [1.0, 2.0]]))
    np.testing.assert_allclose(w, [1.0, 0.0], rtol=0, atol=1e-12)


def shifted(target: float, by: float) -> float:
    """A float ``x`` with ``x + by == target`` exactly in float64 (``by`` = the box's slack)."""
    x = target - by
    while x + by != target:
        x = np.nextafter(x, np.inf if x + by < target else -np.inf)
    return float(x)


def test_a_min_norm_point_inside_the_box_is_returned_exactly() -> None:
    gram = np.diag([1.0, 4.0])
    exact = _solvers.min_norm_simplex(gram)
    np.testing.assert_allclose(exact, [0.8, 0.2], rtol=0, atol=1e-15)
    a = float(exact[0])
    for lower, upper in [
        ([0.0, 0.0], [1.0, 1.0]),
        ([0.0, 0.0], [a, 1.0]),  # on the upper face
        ([a, 0.0], [1.0, 1.0]),  # on the lower face
        ([shifted(a, -1e-12), 0.0], [1.0, 1.0]),  # above w by exactly the 1e-12 slack
        ([0.0, 0.0], [shifted(a, 1e-12), 1.0]),  # below w by exactly the slack
    ]:
        w = _solvers.min_norm_simplex_box(gram, np.array(lower), np.array(upper))
        np.testing.assert_array_equal(w, exact, err_msg=f"box {lower} .. {upper}")


@pytest.mark.parametrize(
    ("diagonal", "lower", "upper"),
    [
        ([1.0, 1.0], [0.7, 0.0], [1.0, 1.0]),  # by hand: (0.7, 0.3)
        ([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.3, 1.0, 1.0]),  # by hand: (0.3, 0.42, 0.28)
        ([1.0, 2.0, 4.0, 8.0], [0.05, 0.1, 0.2, 0.1], [0.3, 0.4, 0.5, 0.6]),
        ([3.0, 1.0, 1.0], [0.0, 0.6, 0.0], [0.1, 1.0, 1.0]),
    ],
)
def test_a_min_norm_point_outside_the_box_is_the_water_filling_solution(
    diagonal: list[float], lower: list[float], upper: list[float]
) -> None:
    d, lo, up = np.array(diagonal), np.array(lower), np.array(upper)
    expected = water_filling(d, lo, up)
    assert not np.allclose(_solvers.min_norm_simplex(np.diag(d)), expected)  # the box is active
    w = _solvers.min_norm_simplex_box(np.diag(d), lo, up)
    np.testing.assert_allclose(w, expected, rtol=0, atol=1e-8)
    assert np.all(w >= lo - 1e-15) and np.all(w <= up + 1e-15)  # clipped, then rescaled to sum 1


def test_hand_values_of_water_filling() -> None:
    np.testing.assert_allclose(
        water_filling(np.array([1.0, 2.0, 3.0]), np.zeros(3), np.array([0.3, 1.0, 1.0])), [0.3, 0.42, 0.28]
    )


def test_a_box_of_zero_width_is_its_only_point() -> None:
    lower = np.array([0.25, 0.75])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # answered without a solver: no 0 / 0 on a box with no room
        w = _solvers.min_norm_simplex_box(np.eye(2), lower, lower.copy())
    np.testing.assert_allclose(w, lower, rtol=0, atol=1e-15)


def test_slsqp_receives_the_gradient_of_the_normalised_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def spy(fun, jac, start, lower, upper):  # noqa: ANN001, ANN202
        seen.update(fun=fun, jac=jac, start=start)
        return start

    monkeypatch.setattr(_solvers, "minimize_on_simplex", spy)
    gram = np.array([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]])
    _solvers.min_norm_simplex_box(gram, np.array([0.5, 0.0, 0.0]), np.ones(3))
    normalised = gram / 2.0  # trace 6 over K = 3
    v = np.array([0.6, 0.1, 0.3])
    assert seen["fun"](v) == pytest.approx(v @ normalised @ v, rel=1e-14)
    h = 1e-5
    central = np.array([(seen["fun"](v + h * e) - seen["fun"](v - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(seen["jac"](v), central, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("lower", "upper"),
    [([0.4, 0.0], [0.5, 1.0]), ([0.0, 0.0, 0.0], [0.3, 1.0, 1.0]), ([0.1, 0.2, 0.05], [0.2, 0.9, 0.1])],
)
def test_the_starting_point_lies_in_the_box_and_sums_to_one(lower: list[float], upper: list[float]) -> None:
    lo, up = np.array(lower), np.array(upper)
    start = _solvers._feasible_start(lo, up)
    assert start.sum() == pytest.approx(1.0, abs=1e-15)
    assert np.all(start >= lo) and np.all(start <= up)
    # by hand for the first box: slack 0.6 shared in proportion to the room (0.1, 1.0)
    if lower == [0.4, 0.0]:
        np.testing.assert_allclose(start, [0.4 + 0.1 * 0.6 / 1.1, 0.6 / 1.1], rtol=1e-15)


def quadratic(diagonal: np.ndarray) -> tuple:
    return (lambda v: float(v @ (diagonal * v))), (lambda v: 2 * diagonal * v)


def test_slsqp_uses_the_analytic_gradient_and_converges_silently() -> None:
    d = np.array([1.0, 2.0, 3.0])
    fun, gradient = quadratic(d)
    calls = []

    def jac(v: np.ndarray) -> np.ndarray:
        calls.append(v)
        return gradient(v)

    lo, up = np.zeros(3), np.array([0.3, 1.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither "did not converge" nor an unknown-option warning
        w = _solvers.minimize_on_simplex(fun, jac, np.array([0.2, 0.4, 0.4]), lo, up)
    assert calls, "the analytic gradient was never evaluated"
    np.testing.assert_allclose(w, [0.3, 0.42, 0.28], rtol=0, atol=1e-8)


def test_a_solver_that_stops_early_warns_the_caller_and_still_returns_a_point_of_the_simplex(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_solvers, "SLSQP_MAXITER", 0)
    fun, jac = quadratic(np.array([1.0, 2.0, 3.0]))
    with pytest.warns(RuntimeWarning, match=r"SLSQP on the simplex did not converge \(.+\); using its last iterate"):
        w = _solvers.minimize_on_simplex(fun, jac, np.array([0.6, 0.6, 0.6]), np.zeros(3), np.ones(3))
    np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3], rtol=0, atol=1e-15)  # the start, rescaled to sum 1


def test_the_convergence_warning_points_at_the_callers_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # ``stacklevel=2`` names the line that called the solver (read through a stand-in for the warnings
    # module, since a wrapper around the solver, such as mutmut's, adds frames of its own)
    issued = []
    monkeypatch.setattr(_solvers, "SLSQP_MAXITER", 0)
    monkeypatch.setattr(_solvers, "warnings", SimpleNamespace(warn=lambda *a, **kw: issued.append((a, kw))))
    fun, jac = quadratic(np.array([1.0, 2.0]))
    _solvers.minimize_on_simplex(fun, jac, np.array([0.5, 0.5]), np.zeros(2), np.ones(2))
    [(args, kwargs)] = issued
    assert args[1:] == (RuntimeWarning,) and kwargs == {"stacklevel": 2}


def test_to_numpy_gives_the_float64_symmetric_part() -> None:
    from fedmtl.methods.aggregation._solvers import to_numpy

    array = to_numpy(torch.tensor([[1.0, 3.0], [1.0, 0.1]]))  # float32 in, float64 out: 0.1 kept as float32's
    assert array.dtype == np.float64
    assert np.array_equal(array, np.array([[1.0, 2.0], [2.0, float(np.float32(0.1))]]))


def nnls_min_norm(gram: np.ndarray) -> np.ndarray:
    """The NNLS route of :func:`_solvers.min_norm_simplex`, with the active-set steps switched off."""
    from unittest import mock

    with mock.patch.object(_solvers, "min_norm_active_set", lambda *args: None):
        return _solvers.min_norm_simplex(gram)


@pytest.mark.parametrize(
    ("k", "p", "shared", "seed"), [(6, 20, 0.0, 0), (50, 400, 0.0, 1), (80, 3000, 0.9, 2), (30, 100, 0.6, 3)]
)
def test_the_min_norm_active_set_settles_on_the_nnls_solution(k, p, shared, seed) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(k, p)) * np.sqrt(1 - shared) + np.sqrt(shared) * rng.normal(size=(1, p))
    rows *= np.exp(rng.normal(size=(k, 1)))
    gram = rows @ rows.T
    gram /= _solvers.mean_diagonal_scale(gram)
    w = _solvers.min_norm_active_set(gram)
    assert w is not None and w.min() >= 0 and abs(w.sum() - 1) < 1e-12
    reference = nnls_min_norm(gram)
    assert w @ gram @ w <= reference @ gram @ reference * (1 + 1e-12)
    np.testing.assert_allclose(w, reference, rtol=0, atol=1e-8)
    support = w > 0
    assert np.ptp((gram @ w)[support]) < 1e-12 and (gram @ w).min() >= (gram @ w)[support].min() - 1e-12
    if shared:
        assert 0 < support.sum() < k  # a proper support: the steps had to find it


def test_the_min_norm_active_set_gives_way_to_nnls_where_it_cannot_settle(monkeypatch) -> None:
    rows = np.random.default_rng(4).normal(size=(6, 3))
    dependent = rows @ rows.T  # rank 3: the full support's block has no Cholesky factor
    assert _solvers.min_norm_active_set(dependent) is None
    assert _solvers.min_norm_active_set(np.diag([1.0, 2.0]), max_steps=0) is None
    w = _solvers.min_norm_simplex(dependent)  # through NNLS
    np.testing.assert_allclose(w, nnls_min_norm(dependent), rtol=0, atol=1e-12)
    assert np.abs(w @ dependent).max() < 1e-6  # this seed: the origin lies in the hull of the 6 rows
