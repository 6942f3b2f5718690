"""CAGrad (Liu et al., NeurIPS 2021) against its published formula, solved independently.

The inner problem ``min_{w in simplex} g_w . g0 + c ||g0|| ||g_w||`` is re-solved here with a
softmax parameterisation and BFGS (the implementation uses SLSQP on the simplex), checked on a
dense grid, and the resulting ``d`` is checked against the primal problem it solves:
``max_{||d - g0|| <= c ||g0||} min_i g_i . d``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import softmax

from fedmtl.methods.aggregation import AggregationInput, CAGrad


def inputs(rows: torch.Tensor) -> AggregationInput:
    return AggregationInput(rows, torch.ones(rows.shape[0]))


def random_rows(k: int, p: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, p, generator=generator, dtype=torch.float64)
    return rows * torch.exp(0.5 * torch.randn(k, 1, generator=generator, dtype=torch.float64))


def objective(w: np.ndarray, gram: np.ndarray, c: float) -> float:
    k = gram.shape[0]
    g0_norm = np.sqrt(gram.mean())
    return float(w @ gram @ np.full(k, 1 / k) + c * g0_norm * np.sqrt(max(w @ gram @ w, 0.0)))


def softmax_bfgs_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """Best of several BFGS runs over ``w = softmax(z)``."""
    k = gram.shape[0]
    runs = [
        minimize(lambda z: objective(softmax(z), gram, c), start, method="BFGS", options={"gtol": 1e-12})
        for start in np.random.default_rng(0).normal(size=(4, k))
    ]
    return softmax(min(runs, key=lambda run: run.fun).x)


def published_direction(rows: torch.Tensor, w: np.ndarray, c: float) -> torch.Tensor:
    """``d = g0 + (c ||g0|| / ||g_w||) g_w``, before any rescaling."""
    g0 = rows.mean(dim=0)
    g_w = torch.from_numpy(w) @ rows
    return g0 + c * g0.norm() / g_w.norm() * g_w


@pytest.mark.parametrize("c", [0.4, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_matches_the_formula_solved_independently(seed: int, c: float) -> None:
    rows = random_rows(3, 6, seed)
    gram = (rows @ rows.T).numpy()
    expected = published_direction(rows, softmax_bfgs_weights(gram, c), c)
    result = CAGrad(c=c, rescale=0, mean_scaled=False)(inputs(rows))
    torch.testing.assert_close(result.direction, expected, rtol=0, atol=1e-4 * float(expected.norm()))


def test_matches_a_dense_grid() -> None:
    rows, c, steps = random_rows(3, 6, seed=7), 0.4, 600
    gram = (rows @ rows.T).numpy()
    grid = np.array([(i, j, steps - i - j) for i, j in itertools.product(range(steps + 1), repeat=2) if i + j <= steps])
    grid = grid / steps
    g0_norm = np.sqrt(gram.mean())
    quadratic = np.einsum("ni,ij,nj->n", grid, gram, grid)
    values = grid @ gram @ np.full(3, 1 / 3) + c * g0_norm * np.sqrt(np.clip(quadratic, 0, None))
    expected = published_direction(rows, grid[int(np.argmin(values))], c)
    result = CAGrad(c=c, rescale=0, mean_scaled=False)(inputs(rows))
    torch.testing.assert_close(result.direction, expected, rtol=0, atol=1e-2 * float(expected.norm()))


@pytest.mark.parametrize(("k", "seed"), [(3, 0), (5, 1), (10, 2)])
def test_direction_solves_the_primal_max_min_problem(k: int, seed: int) -> None:
    rows, c = random_rows(k, 20, seed), 0.5
    d = CAGrad(c=c, rescale=0, mean_scaled=False)(inputs(rows)).direction
    g0 = rows.mean(dim=0)
    radius = c * float(g0.norm())
    assert abs(float((d - g0).norm()) - radius) < 1e-6 * radius  # on the boundary of the ball
    generator = torch.Generator().manual_seed(seed)
    unit = torch.randn(20_000, 20, generator=generator, dtype=torch.float64)
    unit = unit / unit.norm(dim=1, keepdim=True) * torch.rand(20_000, 1, generator=generator, dtype=torch.float64)
    candidates = g0 + radius * unit
    worst_case = (candidates @ rows.T).min(dim=1).values
    assert float(worst_case.max()) <= float((rows @ d).min()) + 1e-6 * float(rows.norm(dim=1).max()) * radius


@pytest.mark.parametrize(("k", "p", "seed"), [(5, 20, 0), (10, 5, 1), (12, 60, 2)])
def test_inner_solution_is_no_worse_than_the_independent_one_and_satisfies_kkt(k: int, p: int, seed: int) -> None:
    rows, c = random_rows(k, p, seed), 0.4
    gram = (rows @ rows.T).numpy()
    result = CAGrad(c=c, rescale=0, mean_scaled=False)(inputs(rows))
    w = result.weights.numpy() - 1 / k  # weights = 1/K + lambda w with w on the simplex
    w = w / w.sum()
    assert objective(w, gram, c) <= objective(softmax_bfgs_weights(gram, c), gram, c) + 1e-9
    # Stationarity: g_i . d is the same for every row in the support of w, and no smaller elsewhere.
    improvement = (rows @ result.direction).numpy() / float(rows.norm(dim=1).max() * result.direction.norm())
    support = w > 1e-6
    assert np.ptp(improvement[support]) < 1e-5
    assert improvement.min() >= improvement[support].min() - 1e-5


@pytest.mark.parametrize(
    ("rescale", "mean_scaled", "factor"),
    [(0, False, 1.4), (1, False, 1.4 / 1.16), (2, False, 1.0), (0, True, 1.0), (1, True, 1.0), (2, True, 1.0)],
)
def test_scale_of_identical_rows(rescale: int, mean_scaled: bool, factor: float) -> None:
    row = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    rows = row.expand(4, 3).clone()
    result = CAGrad(c=0.4, rescale=rescale, mean_scaled=mean_scaled)(inputs(rows))
    torch.testing.assert_close(result.direction, factor * row, rtol=0, atol=1e-12)


def test_rescale_modes_differ_only_by_their_factors() -> None:
    rows, c = random_rows(4, 5, seed=3), 0.4
    raw = CAGrad(c=c, rescale=0, mean_scaled=False)(inputs(rows)).direction
    for rescale, divisor in [(1, 1 + c**2), (2, 1 + c)]:
        scaled = CAGrad(c=c, rescale=rescale, mean_scaled=False)(inputs(rows)).direction
        torch.testing.assert_close(scaled, raw / divisor, rtol=0, atol=1e-10)
    torch.testing.assert_close(CAGrad(c=c)(inputs(rows)).direction, raw / (1 + c), rtol=0, atol=1e-10)


def test_zero_c_is_the_mean() -> None:
    rows = random_rows(4, 5, seed=4)
    torch.testing.assert_close(CAGrad(c=0.0)(inputs(rows)).direction, rows.mean(dim=0), rtol=0, atol=1e-12)


def test_negative_c_is_rejected() -> None:
    with pytest.raises(ValueError, match="c must be >= 0, got -1"):
        CAGrad(c=-1)


def test_one_row_gets_all_the_weight_without_a_solver() -> None:
    from fedmtl.methods.aggregation.cagrad import conflict_averse_weights

    w = conflict_averse_weights(np.array([[2.0]]), 0.5)
    assert w.shape == (1,) and w[0] == 1.0


def test_slsqp_receives_the_gradient_of_the_inner_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedmtl.methods.aggregation import cagrad

    seen = {}

    def spy(fun, jac, start, lower, upper):  # noqa: ANN001, ANN202
        seen.update(fun=fun, jac=jac)
        return start

    monkeypatch.setattr(cagrad, "minimize_on_simplex", spy)
    monkeypatch.setattr(cagrad, "active_set_weights", lambda *args: None)  # as when its steps do not settle
    gram = np.array([[2.0, -0.5, 0.3], [-0.5, 1.0, -0.2], [0.3, -0.2, 1.5]])
    cagrad.conflict_averse_weights(gram, 0.4)
    v = np.array([0.2, 0.5, 0.3])
    # the objective w . G 1/K + r sqrt(w^T G w), by hand, and its central differences
    assert seen["fun"](v) == pytest.approx(v @ gram @ np.full(3, 1 / 3) + 0.4 * np.sqrt(v @ gram @ v), rel=1e-12)
    h = 1e-6
    central = np.array([(seen["fun"](v + h * e) - seen["fun"](v - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(seen["jac"](v), central, rtol=0, atol=1e-8)


def test_bad_settings_say_what_is_valid() -> None:
    for settings, message in [
        ({"c": -0.1}, "c must be >= 0, got -0.1"),
        ({"rescale": 3}, "rescale must be one of [0, 1, 2], got 3"),
        ({"rescale": True}, "rescale must be one of [0, 1, 2], got True"),  # a bool is not a mode
    ]:
        with pytest.raises(ValueError) as raised:
            CAGrad(**settings)
        assert str(raised.value) == message


def slsqp_weights(gram: np.ndarray, radius: float) -> np.ndarray:
    from fedmtl.methods.aggregation import cagrad

    k = gram.shape[0]
    uniform = np.full(k, 1 / k)
    towards_mean = gram @ uniform
    return cagrad.minimize_on_simplex(
        lambda w: float(w @ towards_mean + radius * np.sqrt(w @ gram @ w + cagrad.SQRT_EPS)),
        lambda w: towards_mean + radius * (gram @ w) / np.sqrt(w @ gram @ w + cagrad.SQRT_EPS),
        uniform,
        np.zeros(k),
        np.ones(k),
    )


@pytest.mark.parametrize(
    ("k", "p", "shared", "seed"), [(8, 30, 0.0, 0), (40, 400, 0.0, 1), (60, 2000, 0.9, 2), (30, 200, 0.5, 3)]
)
def test_the_active_set_steps_settle_on_the_slsqp_solution_and_its_optimality_conditions(k, p, shared, seed) -> None:
    from fedmtl.methods.aggregation.cagrad import active_set_weights

    generator = torch.Generator().manual_seed(seed)
    rows = random_rows(k, p, seed) * (1 - shared) ** 0.5 + shared**0.5 * torch.randn(1, p, generator=generator).double()
    gram = (rows @ rows.T).numpy()
    gram = gram / (np.trace(gram) / k)
    radius = 0.4 * np.sqrt(gram.mean())
    w = active_set_weights(gram, radius)
    assert w is not None and w.min() >= 0 and abs(w.sum() - 1) < 1e-12
    reference = slsqp_weights(gram, radius)
    value = lambda v: float(v @ gram @ np.full(k, 1 / k) + radius * np.sqrt(v @ gram @ v))  # noqa: E731
    assert value(w) <= value(reference) + 1e-12
    np.testing.assert_allclose(w, reference, rtol=0, atol=1e-5)
    condition = gram @ np.full(k, 1 / k) + radius * gram @ w / np.sqrt(w @ gram @ w)
    support = w > 0
    assert np.ptp(condition[support]) < 1e-10 and condition.min() >= condition[support].min() - 1e-10
    if shared:
        assert 0 < support.sum() < k  # the support is a proper subset: the steps had to find it


def test_the_active_set_steps_give_way_to_slsqp_where_they_cannot_settle(monkeypatch) -> None:
    from fedmtl.methods.aggregation import cagrad

    dependent = (lambda r: r @ r.T)(random_rows(6, 3, seed=4).numpy())  # rank 3: G_SS singular for |S| > 3
    assert cagrad.active_set_weights(dependent / np.trace(dependent) * 6, 0.4) is None
    opposed = np.array([[1.0, -1.0], [-1.0, 1.0]])  # c = 1.5 with the origin in the hull: the minimum has s = 0
    assert cagrad.active_set_weights(opposed, 1.5) is None
    slsqp_calls = []
    real = cagrad.minimize_on_simplex
    monkeypatch.setattr(cagrad, "minimize_on_simplex", lambda *a: slsqp_calls.append(1) or real(*a))
    w = cagrad.conflict_averse_weights(dependent, 0.4)
    assert slsqp_calls and w.min() >= 0 and abs(w.sum() - 1) < 1e-9
    monkeypatch.setattr(cagrad, "MAX_ACTIVE_SET_STEPS", 0)
    gram = (lambda r: r @ r.T)(random_rows(5, 20, seed=5).numpy())
    assert cagrad.active_set_weights(gram, 0.4) is None
