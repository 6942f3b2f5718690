"""MGDA (Sener & Koltun, NeurIPS 2018) and the FedMGDA+ bound, against independent solutions.

Oracles: the two-row closed form; a dense grid over the simplex; and the optimality certificate of
the min-norm point of a convex hull (``d`` in the hull with ``g_i . d >= ||d||^2`` for every row).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from fedmtl.methods.aggregation import MGDA, AggregationInput


def inputs(
    rows: torch.Tensor, losses: torch.Tensor | None = None, counts: torch.Tensor | None = None
) -> AggregationInput:
    k = rows.shape[0]
    return AggregationInput(rows, torch.ones(k) if counts is None else counts, losses=losses)


def simplex_grid(k: int, steps: int) -> np.ndarray:
    """All points of the simplex with coordinates in multiples of ``1 / steps`` (``k = 3``)."""
    assert k == 3
    points = [(i, j, steps - i - j) for i, j in itertools.product(range(steps + 1), repeat=2) if i + j <= steps]
    return np.array(points, dtype=np.float64) / steps


def random_rows(k: int, p: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, p, generator=generator, dtype=torch.float64)
    return rows * torch.exp(torch.randn(k, 1, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
def test_two_rows_match_the_closed_form(seed: int) -> None:
    g1, g2 = random_rows(2, 6, seed)
    w1 = float(((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2))).clamp(0, 1))
    expected = w1 * g1 + (1 - w1) * g2
    torch.testing.assert_close(MGDA()(inputs(torch.stack([g1, g2]))).direction, expected, rtol=0, atol=1e-12)


def test_two_rows_at_a_vertex() -> None:
    g1, g2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([3.0, 1.0], dtype=torch.float64)
    result = MGDA()(inputs(torch.stack([g1, g2])))  # g1 . g2 >= ||g1||^2: the min-norm point is g1
    torch.testing.assert_close(result.direction, g1, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.weights, torch.tensor([1.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_three_rows_match_a_dense_grid(seed: int) -> None:
    rows = random_rows(3, 5, seed)
    grid = simplex_grid(3, 400)
    gram = (rows @ rows.T).numpy()
    best = grid[np.argmin(np.einsum("ni,ij,nj->n", grid, gram, grid))]
    direction = MGDA()(inputs(rows)).direction
    grid_direction = torch.from_numpy(best) @ rows
    assert float(direction @ direction) <= float(grid_direction @ grid_direction) + 1e-12
    scale = float(rows.norm(dim=1).max())
    torch.testing.assert_close(direction, grid_direction, rtol=0, atol=0.02 * scale)  # grid step 1/400


@pytest.mark.parametrize(("k", "p"), [(3, 5), (5, 100), (10, 7), (10, 1), (50, 20), (50, 500)])
def test_min_norm_certificate(k: int, p: int) -> None:
    rows = random_rows(k, p, seed=k + p)
    result = MGDA()(inputs(rows))
    weights, direction = result.weights, result.direction
    assert float(weights.min()) >= -1e-12 and abs(float(weights.sum()) - 1) < 1e-12
    squared_norm = float(direction @ direction)
    scale = float(rows.norm(dim=1).max()) ** 2
    assert float((rows @ direction).min()) >= squared_norm - 1e-9 * scale


def test_l2_normalisation_is_the_min_norm_point_of_the_unit_rows_rescaled() -> None:
    rows = random_rows(4, 6, seed=11)
    unit = rows / rows.norm(dim=1, keepdim=True)
    result = MGDA(normalization="l2")(inputs(rows))
    unit_weights = MGDA()(inputs(unit)).weights
    # sum_i w_i g_i / ||g_i||, as weights on the original rows rescaled to sum 1.
    on_rows = unit_weights / rows.norm(dim=1)
    torch.testing.assert_close(result.weights, on_rows / on_rows.sum(), rtol=0, atol=1e-12)


def test_loss_normalisations_need_losses() -> None:
    rows = random_rows(3, 4, seed=0)
    for normalization in ("loss", "loss+"):
        with pytest.raises(ValueError, match="needs losses"):
            MGDA(normalization=normalization)(inputs(rows))


def test_loss_normalisation_divides_rows_by_losses() -> None:
    rows = random_rows(3, 4, seed=5)
    losses = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    result = MGDA(normalization="loss")(inputs(rows, losses=losses))
    reference = MGDA()(inputs(rows / losses[:, None])).direction
    cosine = result.direction @ reference / (result.direction.norm() * reference.norm())
    assert float(cosine) > 1 - 1e-12


@pytest.mark.parametrize("max_deviation", [0.0, 0.02, 0.1])
@pytest.mark.parametrize("seed", range(3))
def test_fedmgda_plus_bound_is_respected(max_deviation: float, seed: int) -> None:
    rows = random_rows(10, 20, seed)
    weights = MGDA(max_deviation=max_deviation)(inputs(rows)).weights
    assert float((weights - 0.1).abs().max()) <= max_deviation + 1e-9
    assert abs(float(weights.sum()) - 1) < 1e-12 and float(weights.min()) >= -1e-12


def test_fedmgda_plus_matches_a_dense_grid_inside_the_box() -> None:
    rows = random_rows(3, 5, seed=2)
    epsilon = 0.1
    grid = simplex_grid(3, 600)
    grid = grid[np.abs(grid - 1 / 3).max(axis=1) <= epsilon + 1e-12]
    gram = (rows @ rows.T).numpy()
    best = grid[np.argmin(np.einsum("ni,ij,nj->n", grid, gram, grid))]
    unbounded = MGDA()(inputs(rows)).weights
    assert float((unbounded - 1 / 3).abs().max()) > epsilon  # the bound is active
    weights = MGDA(max_deviation=epsilon)(inputs(rows)).weights
    np.testing.assert_allclose(weights.numpy(), best, atol=3 / 600)
    direction, grid_direction = weights @ rows, torch.from_numpy(best) @ rows
    assert float(direction @ direction) <= float(grid_direction @ grid_direction) + 1e-12


def test_fedmgda_plus_can_center_on_the_example_shares() -> None:
    rows = random_rows(4, 6, seed=3)
    counts = torch.tensor([10.0, 20.0, 30.0, 40.0])
    weights = MGDA(max_deviation=0.0, deviation_center="num_examples")(inputs(rows, counts=counts)).weights
    torch.testing.assert_close(weights, counts.double() / counts.double().sum(), rtol=0, atol=1e-12)


def test_negative_max_deviation_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_deviation must be >= 0"):
        MGDA(max_deviation=-0.1)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_loss_normalisations_need_positive_losses_and_say_which(bad: float) -> None:
    rows = random_rows(2, 4, seed=1)
    for normalization in ("loss", "loss+"):
        with pytest.raises(ValueError) as raised:
            MGDA(normalization=normalization)(inputs(rows, losses=torch.tensor([1.0, bad])))
        assert str(raised.value) == f"mgda normalization {normalization!r} needs positive losses, got [1.0, {bad}]"


def test_the_fedmgda_box_is_the_deviation_clipped_to_the_unit_interval() -> None:
    from fedmtl.methods.aggregation.mgda import deviation_box

    lower, upper = deviation_box(np.array([0.05, 0.5, 0.95]), 0.1)
    np.testing.assert_allclose(lower, [0.0, 0.4, 0.85], rtol=0, atol=1e-15)
    np.testing.assert_allclose(upper, [0.15, 0.6, 1.0], rtol=0, atol=1e-15)


def test_a_uniform_box_centre_ignores_the_example_counts() -> None:
    rows = random_rows(4, 6, seed=3)
    counts = torch.tensor([10.0, 20.0, 30.0, 40.0])
    weights = MGDA(max_deviation=0.0, deviation_center="uniform")(inputs(rows, counts=counts)).weights
    torch.testing.assert_close(weights, torch.full((4,), 0.25, dtype=torch.float64), rtol=0, atol=1e-12)


def test_zero_rows_count_as_norm_one_also_when_rounding_makes_their_diagonal_negative() -> None:
    from fedmtl.methods.aggregation.mgda import row_scales

    gram = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1e-20]])
    given = inputs(torch.zeros(3, 2, dtype=torch.float64), losses=torch.tensor([0.5, 2.0, 3.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no square root of a negative number
        np.testing.assert_array_equal(row_scales(gram, given, "l2"), [2.0, 1.0, 1.0])
        np.testing.assert_array_equal(row_scales(gram, given, "loss+"), [1.0, 2.0, 3.0])
        np.testing.assert_array_equal(row_scales(gram, given, "none"), [1.0, 1.0, 1.0])


def test_losses_in_bfloat16_divide_the_rows_as_their_float64_values() -> None:
    rows = random_rows(3, 4, seed=5)
    losses = torch.tensor([0.5, 2.0, 1.25], dtype=torch.bfloat16)  # exact in bfloat16
    for normalization in ("loss", "loss+"):
        low = MGDA(normalization=normalization)(inputs(rows, losses=losses))
        high = MGDA(normalization=normalization)(inputs(rows, losses=losses.double()))
        torch.testing.assert_close(low.direction, high.direction, rtol=0, atol=0)
