"""The rules inside the batched dual-cone solver (UPGrad's default projector), each checked where it decides
the outcome: every problem is settled by the Newton steps themselves (no per-row NNLS fallback) on
well-conditioned Gramians, however many problems and however they are batched; problems settle
independently of their batch; the free-set guess is the documented FISTA iterate; exact answers on
hand-made Gramians (an exactly zero multiplier, exactly representable fractions, the edge of the float
range); and the fallback works in float64 whatever the input dtype. References: SciPy's NNLS on the same
QP, answers derived by hand, and a NumPy restatement of FISTA (Beck & Teboulle 2009)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.methods.aggregation import dual_cone_batched
from fedmtl.methods.aggregation._solvers import nonneg_shift_qp, psd_sqrt
from fedmtl.methods.aggregation.dual_cone_batched import project_rows


def gramian(k: int, p: int, seed: int, reg: float = 1e-4) -> torch.Tensor:
    """Trace-normalised Gramian of ``k`` Gaussian rows in ``p`` dimensions with spread norms, plus ``reg * I``."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, p, generator=generator, dtype=torch.float64)
    rows = rows * torch.exp(torch.randn(k, 1, generator=generator, dtype=torch.float64))
    gram = rows @ rows.T
    return gram / gram.trace() + reg * torch.eye(k, dtype=torch.float64)


def nnls_rows(gram: torch.Tensor, lower: torch.Tensor) -> np.ndarray:
    """The reference: each problem solved on its own by SciPy's NNLS, in float64."""
    root = psd_sqrt(gram.to(torch.float64).numpy())
    return np.stack([nonneg_shift_qp(root, row) for row in lower.to(torch.float64).numpy()])


@pytest.fixture
def fallback_calls(monkeypatch) -> list[int]:
    """Counts the problems handed to the per-row NNLS fallback (the answer is still NNLS's)."""
    calls: list[int] = []
    real = dual_cone_batched.nonneg_shift_qp
    monkeypatch.setattr(dual_cone_batched, "nonneg_shift_qp", lambda *args: calls.append(1) or real(*args))
    return calls


def hand_gramian() -> torch.Tensor:
    """Rows a = (1, 0, 0), b = (0, 1, 0), c = (-1, 0, 1): a and c conflict, b is orthogonal to both."""
    rows = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)
    return rows @ rows.T


@pytest.mark.parametrize(("k", "p", "seed", "problems"), [(8, 30, 1, 8), (6, 4, 2, 25), (12, 40, 3, 40)])
def test_every_problem_is_settled_by_newton_steps_when_problems_outnumber_rows(
    k, p, seed, problems, fallback_calls
) -> None:
    gram = gramian(k, p, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    lower = torch.cat([torch.eye(k, dtype=torch.float64) / k, torch.randn(problems, k, generator=generator).double()])
    solution = project_rows(gram, lower)
    expected = nnls_rows(gram, lower)
    np.testing.assert_allclose(solution.numpy(), expected, rtol=0, atol=1e-7 * np.abs(expected).max())
    assert fallback_calls == []  # the Newton steps certified every problem (KKT) on their own


def test_batches_hold_as_many_problems_as_block_bytes_allow_and_cover_each_problem_once(
    monkeypatch, fallback_calls
) -> None:
    k, problems = 7, 20
    gram = gramian(k, 15, seed=4)
    lower = torch.randn(problems, k, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = nnls_rows(gram, lower)
    batches: list[tuple[torch.Tensor, int]] = []  # (the batch's G u rows, the widest free set of its step)
    steps: list[tuple[torch.Tensor, int]] = []
    real_step, real_batch = dual_cone_batched._solve_on_free_sets, dual_cone_batched._cholesky_on_free_sets

    def step(gram_, linear, free):
        steps.append((linear, int(free.sum(dim=1).max())))
        return real_step(gram_, linear, free)

    monkeypatch.setattr(dual_cone_batched, "_solve_on_free_sets", step)
    monkeypatch.setattr(
        dual_cone_batched, "_cholesky_on_free_sets", lambda g, lin, f: batches.append(lin) or real_batch(g, lin, f)
    )
    for block_bytes in (1, 8 * 9 * 3, 8 * 25 * 3 - 1, 8 * 49 * 50):  # one problem a batch ... every problem in one
        batches.clear()
        steps.clear()
        monkeypatch.setattr(dual_cone_batched, "BLOCK_BYTES", block_bytes)
        solution = dual_cone_batched.project_rows(gram, lower)
        seen = 0
        for linear, width in steps:  # each step's problems split in order into batches of f x f float64 blocks
            per_batch = max(1, block_bytes // (8 * width * width)) if width else linear.shape[0]
            sizes = [per_batch] * (linear.shape[0] // per_batch) + [linear.shape[0] % per_batch] * bool(
                linear.shape[0] % per_batch
            )
            mine = batches[seen : seen + len(sizes)] if width else []
            assert [b.shape[0] for b in mine] == (sizes if width else [])
            if width:
                assert torch.equal(torch.cat(mine), linear)  # in order, each problem once
            seen += len(mine)
        assert seen == len(batches) and steps
        np.testing.assert_allclose(solution.numpy(), expected, rtol=0, atol=1e-7 * np.abs(expected).max())
    assert fallback_calls == []


def test_a_multiplier_of_exactly_zero_keeps_its_coordinate_out_of_the_free_set(fallback_calls) -> None:
    # projecting e_a: v = (1, 0, t) with (G v)_c = -1 + 2 t = 0, so t = 1/2; then G v = (1/2, 0, 0): the
    # multiplier of b is exactly 0 (b is orthogonal to a and c), which certifies the optimum as it is
    gram = hand_gramian()
    lower = torch.eye(3, dtype=torch.float64)
    solution = project_rows(gram, lower)
    # e_b conflicts with nothing; projecting e_c: v = (s, 0, 1) with (G v)_a = s - 1 = 0
    expected = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(solution, expected, rtol=0, atol=1e-15)
    assert fallback_calls == []


def test_problems_settle_independently_of_the_others_in_their_batch(monkeypatch, fallback_calls) -> None:
    # rows r, r, -r, s with s orthogonal to r, unregularised: projecting e_2 frees the two identical rows,
    # a singular block; e_3 conflicts with nothing and settles at the first Newton step
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    gram = rows @ rows.T
    lower = torch.eye(4, dtype=torch.float64)[[3, 2]]
    monkeypatch.setattr(dual_cone_batched, "MAX_NEWTON_STEPS", 1)
    solution = project_rows(gram, lower)
    assert len(fallback_calls) == 1  # only the singular problem
    assert torch.equal(solution[0], lower[0])
    np.testing.assert_allclose(solution.numpy(), nnls_rows(gram, lower), rtol=0, atol=1e-6)
    # the fallback's answer: v >= e_2 with G v >= 0 (r^T (v_0 + v_1 - v_2) >= 0)
    assert float((solution[1] @ gram).min()) >= -1e-9
    assert float((solution[1] - lower[1]).min()) >= 0


def power_bound(gram: np.ndarray, steps: int = 20) -> float:
    """1.1 times the Rayleigh quotient after ``steps`` power iterations from the all-ones vector, at most
    the largest absolute row sum (Gershgorin)."""
    vector = np.ones(gram.shape[0])
    for _ in range(steps):
        image = gram @ vector
        estimate = float(vector @ image / (vector @ vector))
        vector = image / np.linalg.norm(image)
    return min(float(np.abs(gram).sum(axis=1).max()), 1.1 * estimate)


def test_the_step_bound_is_about_the_largest_eigenvalue_and_never_above_gershgorin() -> None:
    for k, p, seed in [(12, 5, 12), (40, 400, 3), (200, 20_000, 4)]:
        gram = gramian(k, p, seed)
        bound = dual_cone_batched.largest_eigenvalue_bound(gram)
        largest = float(torch.linalg.eigvalsh(gram)[-1])
        assert largest <= bound <= min(1.1 * largest, float(gram.abs().sum(dim=1).max()))
        assert bound == pytest.approx(power_bound(gram.numpy()), rel=1e-12)
    rows = torch.randn(1000, 100_000, generator=torch.Generator().manual_seed(0)) / 100_000**0.5
    gram = (rows @ rows.T).double()  # many nearly orthogonal rows: Gershgorin's bound is far too large
    assert dual_cone_batched.largest_eigenvalue_bound(gram) < 0.5 * float(gram.abs().sum(dim=1).max())
    assert dual_cone_batched.largest_eigenvalue_bound(torch.zeros(3, 3, dtype=torch.float64)) == 0
    # orthogonal rows: Gershgorin's bound is the largest eigenvalue itself, below 1.1 times the estimate
    diagonal = torch.diag(torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64))
    assert dual_cone_batched.largest_eigenvalue_bound(diagonal) == 3.0
    # two opposed rows: G 1 = 0, so the power steps from the all-ones vector see nothing; Gershgorin's 2 is exact
    opposed = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    assert dual_cone_batched.largest_eigenvalue_bound(opposed) == 2.0


def fista_free_sets(gram: np.ndarray, linear: np.ndarray, steps: int, check_every: int | None = None) -> np.ndarray:
    """FISTA (Beck & Teboulle 2009) on ``min_{z >= 0} z^T G z / 2 + z^T (G u)`` for every row ``G u`` of
    ``linear``, from ``z = 0`` with step ``1 / L``, ``L`` from :func:`power_bound`: where ``z > 0`` after
    ``steps``, or earlier once the sets of all problems are the same at two consecutive checks, one every
    ``check_every`` steps."""
    step = 1.0 / power_bound(gram)
    previous = np.zeros_like(linear)
    extrapolated = previous
    t, checked = 1.0, None
    for done in range(1, steps + 1):
        current = np.maximum(extrapolated - step * (extrapolated @ gram + linear), 0.0)
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        extrapolated = current + (t - 1.0) / t_next * (current - previous)
        previous, t = current, t_next
        if check_every is not None and done % check_every == 0:
            if checked is not None and np.array_equal(checked, current > 0):
                break
            checked = current > 0
    return previous > 0


def guess_inputs(k: int, p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank-deficient Gramian and the rows ``G u`` of UPGrad's bounds, six random bounds and ``u = 0``
    (no conflict: ``z = 0`` throughout)."""
    gram = gramian(k, p, seed)
    generator = torch.Generator().manual_seed(7)
    lower = torch.cat([torch.eye(k, dtype=torch.float64) / k, torch.randn(6, k, generator=generator).double()])
    return gram, torch.cat([lower, torch.zeros(1, k, dtype=torch.float64)]) @ gram


@pytest.fixture
def float64_guess(monkeypatch) -> None:
    """The guess in float64, so that it can be compared exactly with the NumPy restatement."""
    monkeypatch.setattr(dual_cone_batched, "GUESS_DTYPE", torch.float64)


def test_the_free_set_guess_is_the_fista_iterate_after_the_allowed_steps(monkeypatch, float64_guess) -> None:
    gram, linear = guess_inputs(12, 5, seed=12)
    assert power_bound(gram.numpy()) < 1  # a step 1 / L above 1
    monkeypatch.setattr(dual_cone_batched, "GUESS_CHECK_EVERY", 10**6)  # no early stop: exactly the cap
    moved = set()
    for steps in range(1, 25):
        monkeypatch.setattr(dual_cone_batched, "MAX_GUESS_STEPS", steps)
        expected = fista_free_sets(gram.numpy(), linear.numpy(), steps)
        assert np.array_equal((dual_cone_batched._guess(gram, linear) > 0).numpy(), expected), steps
        moved.add(expected.tobytes())
    assert len(moved) > 5  # the guess moves with the number of steps, so the cap is exercised


@pytest.mark.parametrize(("check_every", "cap"), [(3, 24), (4, 64)])  # (4, 64): the defaults
def test_the_free_set_guess_stops_when_its_sets_repeat_from_one_check_to_the_next(
    monkeypatch, float64_guess, check_every, cap
) -> None:
    gram, linear = guess_inputs(8, 3, seed=21)
    monkeypatch.setattr(dual_cone_batched, "GUESS_CHECK_EVERY", check_every)
    monkeypatch.setattr(dual_cone_batched, "MAX_GUESS_STEPS", cap)
    expected = fista_free_sets(gram.numpy(), linear.numpy(), cap, check_every)
    assert not np.array_equal(expected, fista_free_sets(gram.numpy(), linear.numpy(), cap))  # it stopped early
    assert np.array_equal((dual_cone_batched._guess(gram, linear) > 0).numpy(), expected)


def test_on_a_well_conditioned_gramian_one_newton_step_settles_every_problem(monkeypatch, fallback_calls) -> None:
    # the guess (FISTA until its free sets stop moving) is already each problem's final free set
    gram = gramian(10, 40, seed=4)
    lower = torch.eye(10, dtype=torch.float64) / 10
    monkeypatch.setattr(dual_cone_batched, "MAX_NEWTON_STEPS", 1)
    solution = project_rows(gram, lower)
    expected = nnls_rows(gram, lower)
    assert not np.array_equal(expected, lower.numpy())  # some rows conflict: the guess matters
    np.testing.assert_allclose(solution.numpy(), expected, rtol=0, atol=1e-7 * np.abs(expected).max())
    assert fallback_calls == []


def test_exactly_representable_problems_are_solved_exactly() -> None:
    # unit rows at cosine -3/4: v = (1, 3/4) for e_1 (one Cholesky solve of 1 x 1 blocks, no rounding)
    gram = torch.tensor([[1.0, -0.75], [-0.75, 1.0]], dtype=torch.float64)
    solution = project_rows(gram, torch.eye(2, dtype=torch.float64))
    assert torch.equal(solution, torch.tensor([[1.0, 0.75], [0.75, 1.0]], dtype=torch.float64))


def test_the_projection_does_not_depend_on_the_gramians_scale_up_to_the_largest_float() -> None:
    # argmin_{v >= u} v^T (c G) v does not depend on c > 0; 2^1022 leaves no headroom above twice the Gramian
    unit = torch.tensor([[1.0, -0.8], [-0.8, 1.0]], dtype=torch.float64)
    lower = torch.eye(2, dtype=torch.float64)
    expected = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    for scale in (2.0**-1000, 1.0, 2.0**1022):
        torch.testing.assert_close(project_rows(unit * scale, lower), expected, rtol=0, atol=1e-15)


def test_the_fallback_solves_a_float32_problem_in_float64(monkeypatch, fallback_calls) -> None:
    gram = gramian(20, 8, seed=6, reg=1e-6).float()  # ill-conditioned: float32 arithmetic loses ~1e-6
    lower = torch.eye(20) / 20
    monkeypatch.setattr(dual_cone_batched, "MAX_NEWTON_STEPS", 0)  # every problem goes to the fallback
    solution = project_rows(gram, lower)
    assert solution.dtype == torch.float32
    assert len(fallback_calls) == 20
    expected = nnls_rows(gram, lower)  # float64 NNLS on the same float32 numbers
    np.testing.assert_allclose(solution.double().numpy(), expected, rtol=0, atol=5e-7 * np.abs(expected).max())


def test_a_float32_problem_is_solved_in_float32_whatever_torchs_default_dtype() -> None:
    # dtypes come from the data: every tensor the solver creates takes the Gramian's dtype, not the default
    gram = torch.tensor([[1.0, -0.75], [-0.75, 1.0]])
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        solution = project_rows(gram, torch.eye(2, dtype=torch.float32))
    finally:
        torch.set_default_dtype(saved)
    assert solution.dtype == torch.float32
    torch.testing.assert_close(solution, torch.tensor([[1.0, 0.75], [0.75, 1.0]]))
