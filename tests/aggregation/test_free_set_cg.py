"""Conjugate gradients on many free-set blocks of one Gramian (UPGrad's solver for wide free sets), against
dense solves of each block, and the batched dual-cone projections that use it against per-row NNLS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.methods.aggregation import dual_cone_batched, free_set_cg
from fedmtl.methods.aggregation.free_set_cg import solve_on_free_sets
from tests.aggregation.test_dual_cone_batched import assert_kkt, gramian, nnls_rows


def block_solutions(gram: torch.Tensor, rhs: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """The reference: each problem's block solved densely, zero off its set."""
    expected = torch.zeros_like(rhs)
    for b in range(rhs.shape[0]):
        index = torch.nonzero(free[b]).flatten()
        if index.numel():
            expected[b, index] = torch.linalg.solve(gram[index][:, index], rhs[b, index])
    return expected


def unit_diagonal(gram: torch.Tensor) -> torch.Tensor:
    scale = gram.diagonal().sqrt()
    return gram / scale[:, None] / scale[None, :]


@pytest.mark.parametrize(("k", "p", "seed"), [(30, 300, 0), (80, 2000, 1), (50, 40, 2)])
def test_each_problem_solves_its_own_block_from_a_cold_or_a_warm_start(k, p, seed) -> None:
    gram = unit_diagonal(gramian(k, p, seed))
    generator = torch.Generator().manual_seed(seed)
    rhs = torch.randn(12, k, generator=generator, dtype=torch.float64)
    free = torch.rand(12, k, generator=generator) < torch.linspace(0, 1, 12)[:, None]  # empty to (nearly) full
    free[0] = False
    expected = block_solutions(gram, rhs, free)
    for start in (torch.zeros_like(rhs), expected + 1e-3 * torch.randn(12, k, generator=generator).double()):
        z, converged, image = solve_on_free_sets(gram, rhs, free, start, tolerance=1e-12, max_steps=200)
        assert bool(converged.all())
        assert torch.equal(z[~free], torch.zeros_like(z[~free]))  # nothing off the sets, whatever the start
        residual = ((rhs - z @ gram) * free).norm(dim=1)
        assert bool((residual <= 1e-12 * (rhs * free).norm(dim=1)).all())
        torch.testing.assert_close(z, expected, rtol=0, atol=1e-9 * float(expected.abs().max()))
        # the image the steps accumulated is z's, on every coordinate (off the sets: the multipliers)
        fresh = z @ gram
        torch.testing.assert_close(image, fresh, rtol=0, atol=1e-13 * float(fresh.abs().max()))


def test_an_exact_start_takes_no_step_and_too_few_steps_are_reported() -> None:
    gram = unit_diagonal(gramian(40, 400, 3))
    rhs = torch.randn(5, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    free = torch.ones(5, 40, dtype=torch.bool)
    exact = torch.linalg.solve(gram, rhs.T).T
    z, converged, image = solve_on_free_sets(gram, rhs, free, exact, tolerance=1e-10, max_steps=0)
    assert bool(converged.all()) and torch.equal(z, exact) and torch.equal(image, exact @ gram)
    z, converged, _ = solve_on_free_sets(gram, rhs, free, torch.zeros_like(rhs), tolerance=1e-12, max_steps=2)
    assert not bool(converged.any())  # two steps cannot solve a 40 x 40 system to 1e-12
    assert torch.isfinite(z).all()


def test_a_singular_block_stops_unconverged_while_the_others_converge() -> None:
    row = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    rows = torch.stack([row, row, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)])
    gram = rows @ rows.T  # rows 0 and 1 identical: the block {0, 1} is singular
    rhs = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)  # outside the block's range
    free = torch.tensor([[True, True, False], [False, False, True]])
    z, converged, _ = solve_on_free_sets(gram, rhs, free, torch.zeros_like(rhs), tolerance=1e-12, max_steps=10)
    assert converged.tolist() == [False, True]
    assert torch.equal(z[0], torch.zeros(3, dtype=torch.float64))  # no step along a direction of zero curvature
    torch.testing.assert_close(z[1], torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64))


@pytest.fixture
def cg_calls(monkeypatch) -> list[int]:
    """The widest free set of each CG solve of the projections."""
    calls: list[int] = []
    real = free_set_cg.solve_on_free_sets

    def counting(gram, rhs, free, start, **kwargs):
        calls.append(int(free.sum(dim=1).max()))
        return real(gram, rhs, free, start, **kwargs)

    monkeypatch.setattr(free_set_cg, "solve_on_free_sets", counting)
    return calls


@pytest.mark.parametrize(("k", "p", "seed", "shared"), [(120, 5000, 0, 0.0), (90, 60, 1, 0.0), (100, 3000, 2, 0.01)])
def test_projections_with_wide_free_sets_go_through_cg_and_equal_nnls(k, p, seed, shared, cg_calls) -> None:
    gram = gramian(k, p, seed, shared)
    lower = torch.eye(k, dtype=torch.float64) / k
    solution = dual_cone_batched.project_rows(gram, lower)
    assert cg_calls and max(cg_calls) > dual_cone_batched.CHOLESKY_MAX_WIDTH
    expected = nnls_rows(gram, lower)
    np.testing.assert_allclose(solution.numpy(), expected, rtol=0, atol=1e-7 * np.abs(expected).max())
    assert_kkt(gram, lower, solution)
    assert bool((solution >= lower).all())  # exactly, after the rescaling


def test_problems_cg_does_not_converge_take_the_cholesky_solve_with_the_same_answer(monkeypatch, cg_calls) -> None:
    gram = gramian(100, 3000, seed=5)
    lower = torch.eye(100, dtype=torch.float64) / 100
    expected = dual_cone_batched.project_rows(gram, lower)
    cholesky_widths: list[int] = []
    real = dual_cone_batched._solve_on_free_sets
    monkeypatch.setattr(
        dual_cone_batched,
        "_solve_on_free_sets",
        lambda g, lin, free: cholesky_widths.append(int(free.sum(dim=1).max())) or real(g, lin, free),
    )
    monkeypatch.setattr(dual_cone_batched, "CG_MAX_STEPS", 1)  # no wide block converges in one step
    solution = dual_cone_batched.project_rows(gram, lower)
    assert max(cholesky_widths) > dual_cone_batched.CHOLESKY_MAX_WIDTH and cg_calls
    torch.testing.assert_close(solution, expected, rtol=0, atol=1e-9 * float(expected.abs().max()))


def test_free_sets_up_to_the_cholesky_width_are_solved_by_cholesky_and_wider_ones_by_cg(monkeypatch, cg_calls) -> None:
    # many problems with narrow free sets: the widest set decides, not how many free coordinates all have
    gram = gramian(44, 2000, seed=6)
    lower = torch.eye(44, dtype=torch.float64) / 44
    widest = int((dual_cone_batched.project_rows(gram, lower) > lower).sum(dim=1).max())
    assert 1 < widest and cg_calls == []  # the default width (32) is above this Gramian's widest set
    monkeypatch.setattr(dual_cone_batched, "CHOLESKY_MAX_WIDTH", widest)  # the widest set is still Cholesky's
    dual_cone_batched.project_rows(gram, lower)
    assert cg_calls == []
    monkeypatch.setattr(dual_cone_batched, "CHOLESKY_MAX_WIDTH", widest - 1)
    solution = dual_cone_batched.project_rows(gram, lower)
    assert cg_calls and max(cg_calls) == widest
    np.testing.assert_allclose(
        solution.numpy(), nnls_rows(gram, lower), rtol=0, atol=1e-7 * float(solution.abs().max())
    )


def test_a_batch_whose_free_sets_are_all_empty_is_solved_by_z_equal_to_zero(monkeypatch) -> None:
    gram = unit_diagonal(gramian(6, 20, seed=7))
    linear = torch.randn(3, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    free = torch.tensor([[False] * 6, [True, True, False, True, False, False], [False] * 6])
    monkeypatch.setattr(dual_cone_batched, "BLOCK_BYTES", 1)  # one problem a batch: two batches are empty
    z, solvable = dual_cone_batched._solve_on_free_sets(gram, linear, free)
    assert solvable.tolist() == [True, True, True]
    torch.testing.assert_close(z, block_solutions(gram, -linear, free), rtol=0, atol=1e-12)
    assert torch.equal(z[[0, 2]], torch.zeros(2, 6, dtype=torch.float64))
    empty, none_solvable = dual_cone_batched._solve_on_free_sets(gram, linear[:0], free[:0])
    assert empty.shape == (0, 6) and none_solvable.shape == (0,)


def test_cg_stops_once_the_residual_is_within_the_tolerance_not_at_machine_precision() -> None:
    gram = unit_diagonal(gramian(60, 600, 9))
    rhs = torch.randn(8, 60, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    free = torch.ones(8, 60, dtype=torch.bool)
    z, converged, _ = solve_on_free_sets(gram, rhs, free, torch.zeros_like(rhs), tolerance=1e-6, max_steps=200)
    relative = ((rhs - z @ gram).norm(dim=1) / rhs.norm(dim=1)).tolist()
    assert bool(converged.all()) and max(relative) <= 1e-6
    assert min(relative) > 1e-7  # it stopped at the tolerance (here 3e-7 to 5e-7): more steps would reach ~1e-16


def test_on_a_well_conditioned_gramian_one_newton_step_with_cg_settles_every_problem(monkeypatch, cg_calls) -> None:
    calls: list[int] = []
    real = dual_cone_batched.nonneg_shift_qp
    monkeypatch.setattr(dual_cone_batched, "nonneg_shift_qp", lambda *a: calls.append(1) or real(*a))
    cholesky: list[int] = []
    real_cholesky = dual_cone_batched._solve_on_free_sets
    monkeypatch.setattr(
        dual_cone_batched, "_solve_on_free_sets", lambda g, lin, f: cholesky.append(1) or real_cholesky(g, lin, f)
    )
    monkeypatch.setattr(dual_cone_batched, "MAX_NEWTON_STEPS", 1)
    gram = gramian(150, 20_000, seed=13)
    lower = torch.eye(150, dtype=torch.float64) / 150
    solution = dual_cone_batched.project_rows(gram, lower)
    assert cg_calls and max(cg_calls) > dual_cone_batched.CHOLESKY_MAX_WIDTH
    assert calls == [] and cholesky == []  # CG converged and its first Newton step settled every problem
    np.testing.assert_allclose(
        solution.numpy(), nnls_rows(gram, lower), rtol=0, atol=1e-7 * float(solution.abs().max())
    )


def test_no_problems_and_a_single_row() -> None:
    gram = gramian(5, 20, seed=14)
    assert dual_cone_batched.project_rows(gram, torch.zeros(0, 5, dtype=torch.float64)).shape == (0, 5)
    one = torch.tensor([[4.0]], dtype=torch.float64)
    lower = torch.tensor([[0.5]], dtype=torch.float64)  # a single row conflicts with nothing: v = u
    assert torch.equal(dual_cone_batched.project_rows(one, lower), lower)


def test_batches_of_problems_fit_the_block_bytes(monkeypatch) -> None:
    monkeypatch.setattr(dual_cone_batched, "BLOCK_BYTES", 8 * 25 * 3)  # three 5 x 5 float64 blocks
    assert dual_cone_batched._chunks(5, 10) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    monkeypatch.setattr(dual_cone_batched, "BLOCK_BYTES", 8 * 25 * 3 - 1)
    assert dual_cone_batched._chunks(5, 5) == [(0, 2), (2, 4), (4, 5)]
    monkeypatch.setattr(dual_cone_batched, "BLOCK_BYTES", 1)  # at least one problem a batch
    assert dual_cone_batched._chunks(5, 2) == [(0, 1), (1, 2)]


def test_with_cg_a_multiplier_of_exactly_zero_keeps_its_coordinate_out_of_the_free_set(monkeypatch, cg_calls) -> None:
    # 80 Gaussian rows and one orthogonal to all of them: projecting any other row leaves its multiplier
    # exactly 0, which must not free it (freed, it would solve to exactly 0, leave, and cycle)
    rows = torch.zeros(81, 2001, dtype=torch.float64)
    rows[:80, :2000] = torch.randn(80, 2000, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    rows[80, 2000] = 3.0
    gram = rows @ rows.T
    lower = torch.eye(81, dtype=torch.float64) / 81
    calls: list[int] = []
    real = dual_cone_batched.nonneg_shift_qp
    monkeypatch.setattr(dual_cone_batched, "nonneg_shift_qp", lambda *a: calls.append(1) or real(*a))
    solution = dual_cone_batched.project_rows(gram, lower)
    assert cg_calls and max(cg_calls) > dual_cone_batched.CHOLESKY_MAX_WIDTH and calls == []
    assert torch.equal(solution[:80, 80], torch.zeros(80, dtype=torch.float64))
    np.testing.assert_allclose(
        solution.numpy(), nnls_rows(gram, lower), rtol=0, atol=1e-7 * float(solution.abs().max())
    )


def test_a_diagonal_lower_bound_scales_the_gramians_rows_to_the_products_numbers() -> None:
    gram = gramian(30, 300, 7)
    diagonal = torch.diag(torch.rand(30, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    assert torch.equal(dual_cone_batched._times_gram(diagonal, gram), diagonal @ gram)
    diagonal[3, 4] = 0.5  # no longer diagonal: the product
    assert torch.equal(dual_cone_batched._times_gram(diagonal, gram), diagonal @ gram)
    rows = torch.eye(30, dtype=torch.float64)[:5]  # not square: the product
    assert torch.equal(dual_cone_batched._times_gram(rows, gram), gram[:5])


def test_a_newton_step_on_wide_free_sets_reports_cg_slack_where_cg_converged_and_none_after_cholesky(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_step``'s contract: where CG converged, multipliers count as zero down to its tolerance relative to
    ``|G u|``; where it did not (one CG step here), the exact Cholesky solve leaves no slack. ``z @ G`` either way."""
    k = 40
    gram = unit_diagonal(gramian(k, 400, 9))
    linear = torch.randn(6, k, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    free = torch.ones(6, k, dtype=torch.bool)  # wider than CHOLESKY_MAX_WIDTH: CG
    exact = torch.linalg.solve(gram, -linear.T).T
    previous = torch.cat([exact[:3], torch.zeros(3, k, dtype=torch.float64)])  # exact starts converge at once
    monkeypatch.setattr(dual_cone_batched, "CG_MAX_STEPS", 1)
    z, image, solvable, slack = dual_cone_batched._step(gram, linear, free, previous)
    assert bool(solvable.all())
    torch.testing.assert_close(z, exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(image, z @ gram, rtol=0, atol=1e-12)
    expected = dual_cone_batched.CG_TOLERANCE * linear.abs().amax(dim=1)
    assert torch.equal(slack[:3], expected[:3]) and torch.equal(slack[3:], torch.zeros(3, dtype=torch.float64))
