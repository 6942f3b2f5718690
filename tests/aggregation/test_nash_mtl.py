"""Nash-MTL: the weights solve the bargaining condition M alpha = 1/alpha (checked independently)."""

from __future__ import annotations

import pytest
import torch

from fedmtl.methods.aggregation import AggregationInput, NashMTL
from fedmtl.methods.aggregation.nash_mtl import nash_weights


@pytest.mark.parametrize(("k", "p", "seed"), [(2, 5, 0), (3, 7, 1), (5, 50, 2), (8, 100, 3)])
def test_weights_satisfy_the_bargaining_condition(k, p, seed):
    rows = (
        torch.randn(k, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        * torch.rand(k, 1, dtype=torch.float64)
        * 10
    )
    gram = rows @ rows.T
    alpha = nash_weights(gram, ridge=0.0)
    assert (alpha > 0).all()
    torch.testing.assert_close(gram @ alpha, 1.0 / alpha, rtol=1e-8, atol=0)
    direction = NashMTL(ridge=1e-12)(AggregationInput(rows, torch.ones(k, dtype=torch.float64))).direction
    assert (rows @ direction > 0).all(), "the Nash direction conflicts with no row"


def test_two_orthogonal_rows_get_inverse_norm_weights():
    """Orthogonal rows: M = diag(n_i^2) so alpha_i = 1/n_i, and each row contributes a unit step."""
    rows = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    alpha = nash_weights(rows @ rows.T, ridge=0.0)
    torch.testing.assert_close(alpha, torch.tensor([1 / 3, 2.0], dtype=torch.float64))


def test_scale_invariance_of_the_normalised_weights():
    rows = torch.randn(4, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    small = NashMTL()(AggregationInput(rows * 1e-6, torch.ones(4, dtype=torch.float64))).weights
    large = NashMTL()(AggregationInput(rows * 1e3, torch.ones(4, dtype=torch.float64))).weights
    torch.testing.assert_close(small, large, rtol=1e-6, atol=1e-9)


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")  # cvxpy, via torchjd
def test_agrees_with_torchjd_where_its_solver_converges():
    tjd = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    rows = torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.4, 1.0]], dtype=torch.float64)
    theirs = tjd.NashMTL(n_tasks=3, max_norm=0.0, optim_niter=50).weighting(rows).double()
    gram = rows @ rows.T
    if float((gram @ theirs - 1 / theirs).norm()) > 1e-3:
        pytest.skip("torchjd's SCP did not converge on this input")
    ours = nash_weights(gram, ridge=0.0)
    torch.testing.assert_close(ours / ours.sum(), theirs / theirs.sum(), rtol=0, atol=5e-3)


def test_singular_gramian_still_gives_positive_finite_weights():
    rows = torch.tensor([[1.0], [-1.0], [2.0]], dtype=torch.float64)  # rank 1 with a conflict
    weights = NashMTL()(AggregationInput(rows, torch.ones(3, dtype=torch.float64))).weights
    assert torch.isfinite(weights).all() and (weights > 0).all()


def test_nash_weights_are_float64_for_a_float32_gramian_and_all_ones_for_a_zero_one() -> None:
    gram = torch.tensor([[2.0, 0.0], [0.0, 8.0]])  # float32; alpha_i = 1 / sqrt(G_ii) without ridge
    alpha = nash_weights(gram, ridge=0.0)
    expected = torch.tensor([0.5**0.5, 0.125**0.5], dtype=torch.float64)
    assert alpha.dtype == torch.float64 and torch.allclose(alpha, expected, rtol=1e-12, atol=0)
    zero = nash_weights(torch.zeros(3, 3), ridge=0.0)
    assert zero.dtype == torch.float64 and torch.equal(zero, torch.ones(3, dtype=torch.float64))
