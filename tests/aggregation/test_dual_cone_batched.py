"""The batched dual-cone projections (UPGrad's default solver) against per-row NNLS and the KKT conditions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.methods.aggregation import dual_cone_batched
from fedmtl.methods.aggregation._solvers import nonneg_shift_qp, psd_sqrt
from fedmtl.methods.aggregation.dual_cone_batched import project_rows


def gramian(k: int, p: int, seed: int, shared: float = 0.0, reg: float = 1e-4) -> torch.Tensor:
    """Trace-normalised Gramian of ``k`` Gaussian rows in ``p`` dimensions (``p < k``: rank-deficient),
    with row norms spread over two orders of magnitude and a ``shared`` common component, plus ``reg * I``."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, p, generator=generator, dtype=torch.float64)
    rows = rows * (1 - shared) ** 0.5 + shared**0.5 * torch.randn(1, p, generator=generator, dtype=torch.float64)
    rows = rows * torch.exp(torch.randn(k, 1, generator=generator, dtype=torch.float64))
    gram = rows @ rows.T
    return gram / gram.trace() + reg * torch.eye(k, dtype=torch.float64)


def nnls_rows(gram: torch.Tensor, lower: torch.Tensor) -> np.ndarray:
    root = psd_sqrt(gram.numpy())
    return np.stack([nonneg_shift_qp(root, row) for row in lower.numpy()])


def assert_kkt(gram: torch.Tensor, lower: torch.Tensor, solution: torch.Tensor) -> None:
    """``v >= u``, ``G v >= 0``, and ``G v = 0`` wherever ``v > u`` (to rounding)."""
    scale = float(gram.diagonal().max()) * float(lower.abs().max())
    multiplier = solution @ gram
    shift = solution - lower
    assert float(shift.min()) >= -1e-12
    assert float(multiplier.min()) >= -1e-9 * scale
    assert float((shift * multiplier).abs().max()) <= 1e-9 * scale * float(shift.abs().max() + 1)


CASES = [  # (k, p, seed, shared, reg): conflicting, rank-deficient, nearly parallel, unregularised
    (2, 3, 0, 0.0, 1e-4),
    (8, 30, 1, 0.0, 1e-4),
    (40, 10, 2, 0.0, 1e-4),
    (60, 5000, 3, 0.0, 1e-4),
    (30, 100, 4, 0.9, 1e-4),
    (25, 50, 5, -0.0, 0.0),
    (20, 8, 6, 0.0, 1e-6),
]


@pytest.mark.parametrize(("k", "p", "seed", "shared", "reg"), CASES)
def test_upgrads_projections_equal_per_row_nnls_and_satisfy_kkt(k, p, seed, shared, reg) -> None:
    gram = gramian(k, p, seed, shared, reg)
    lower = torch.eye(k, dtype=torch.float64) / k  # UPGrad's rows: e_i / K
    solution = project_rows(gram, lower)
    expected = nnls_rows(gram, lower)
    # NNLS works on sqrt(G), whose rounding is sqrt(eps) relative: it agrees to ~1e-8; the KKT check is exact
    np.testing.assert_allclose(solution.numpy(), expected, rtol=0, atol=1e-7 * np.abs(expected).max())
    assert_kkt(gram, lower, solution)


def test_arbitrary_lower_bounds_negative_ones_included() -> None:
    gram = gramian(15, 40, seed=7)
    lower = torch.randn(9, 15, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    solution = project_rows(gram, lower)
    np.testing.assert_allclose(solution.numpy(), nnls_rows(gram, lower), rtol=0, atol=1e-7)
    assert_kkt(gram, lower, solution)


def test_rows_without_conflict_are_their_own_projection() -> None:
    # every off-diagonal entry non-negative: e_i already satisfies G v >= 0, so nothing moves
    rows = torch.rand(6, 10, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    gram = rows @ rows.T
    lower = torch.eye(6, dtype=torch.float64)
    assert torch.equal(project_rows(gram, lower), lower)


def test_two_rows_by_hand() -> None:
    # unit rows at cosine -0.8: projecting e_1 needs v_2 = 0.8 v_1 so that (G v)_2 = -0.8 + v_2 = 0
    gram = torch.tensor([[1.0, -0.8], [-0.8, 1.0]], dtype=torch.float64)
    solution = project_rows(gram, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(solution, torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64))


def test_unsettled_problems_fall_back_to_nnls_with_the_same_answer(monkeypatch) -> None:
    gram = gramian(30, 60, seed=10)
    lower = torch.eye(30, dtype=torch.float64) / 30
    expected = project_rows(gram, lower)
    calls = []
    real = dual_cone_batched.nonneg_shift_qp
    monkeypatch.setattr(dual_cone_batched, "nonneg_shift_qp", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(dual_cone_batched, "MAX_GUESS_STEPS", 1)  # a poor guess: many problems need more than
    monkeypatch.setattr(dual_cone_batched, "MAX_NEWTON_STEPS", 1)  # the one Newton step they get
    fallen_back = project_rows(gram, lower)
    assert 0 < len(calls) <= 30
    np.testing.assert_allclose(fallen_back.numpy(), expected.numpy(), rtol=0, atol=1e-7 * float(expected.abs().max()))


def test_a_singular_block_falls_back_to_nnls() -> None:
    # two identical rows and one opposed, unregularised: the free-set block {0, 1} is singular
    row = torch.tensor([1.0, 2.0], dtype=torch.float64)
    rows = torch.stack([row, row, -row])
    gram = rows @ rows.T
    lower = torch.eye(3, dtype=torch.float64)
    solution = project_rows(gram, lower)
    assert torch.isfinite(solution).all()
    assert_kkt(gram, lower, solution)


def test_chunked_batches_give_the_same_answer(monkeypatch) -> None:
    gram = gramian(20, 30, seed=11)
    lower = torch.eye(20, dtype=torch.float64) / 20
    whole = project_rows(gram, lower)
    monkeypatch.setattr(dual_cone_batched, "BLOCK_BYTES", 8 * 20 * 20 * 3)  # three problems per batch
    torch.testing.assert_close(project_rows(gram, lower), whole, rtol=0, atol=1e-14)  # block sizes differ
