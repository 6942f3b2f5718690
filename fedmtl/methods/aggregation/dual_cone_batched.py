"""Many dual-cone projections on one Gramian, solved together: ``argmin_{v >= u_b} v^T G v`` for every row
``u_b`` of ``U``.

UPGrad (Quinton & Rey, arXiv 2406.16232) projects each of the ``K`` rows onto the dual cone of all rows,
which torchjd solves as ``K`` separate quadratic programs (one quadprog call each). All ``K`` share the
Gramian ``G``; only the lower bound differs. Each is a linear complementarity problem with the positive
definite matrix ``G`` (``z = v - u >= 0``, ``lambda = G (u + z) >= 0``, ``z^T lambda = 0``), and the
primal-dual active-set method (Hintermüller, Ito & Kunisch, "The primal-dual active set strategy as a
semismooth Newton method", SIAM J. Optim. 13(3), 2002) solves it in a few Newton steps, each one linear
solve on the current free set. Here the steps of all problems run together, in float64 on the Gramian's
device: their solves as one batch of Cholesky solves on the gathered free-set blocks (padded to the
largest), or by conjugate gradients where the free sets are wide (below).

Exactness: a problem stops when its free set repeats, which certifies the KKT conditions (``z > 0`` on the
free set, where ``lambda = 0`` by the solve; ``lambda >= 0`` where ``z = 0``), so the answer is the exact
optimum up to the rounding of one Cholesky solve. Active-set Newton steps may cycle on some positive
definite matrices, and a singular block (``reg_eps = 0`` with dependent rows) has no Cholesky factor: such
problems, if any, are handed to the per-row NNLS solver (:func:`~._solvers.nonneg_shift_qp`).

Scale: the problems are first rescaled to the unit-diagonal Gramian ``D^-1/2 G D^-1/2`` (``v = D^-1/2 y``,
an exact change of variables), so that rows of very different norms, as client updates are, do not slow
the free-set guess (1,000 Gaussian rows with log-normal norms: without it, 64 FISTA steps left 11,787 of
the final free sets' coordinates wrong; with it, 16 steps left none). Wide free sets (more than :data:`CHOLESKY_MAX_WIDTH`) are solved by conjugate gradients
on all problems at once (:mod:`~.free_set_cg`), one ``[B, K] x [K, K]`` product a step, instead of one
Cholesky factorization per problem; problems it does not converge within :data:`CG_MAX_STEPS` take the
Cholesky solve for that Newton step. A problem then settles when its free set repeats with ``z > 0`` on it
and multipliers ``>= -CG_TOLERANCE`` (relative) off it: the KKT conditions up to the solve's residual.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmtl.methods.aggregation import free_set_cg
from fedmtl.methods.aggregation._solvers import nonneg_shift_qp, psd_sqrt

MAX_NEWTON_STEPS = 50  # a cap against cycling: converging problems need a few (one or two on the benchmark Gramians)
# projected-gradient steps that guess the free sets before the first Newton step: until the guess has not
# moved over GUESS_CHECK_EVERY steps, at most MAX_GUESS_STEPS. Checked every 2 rather than 4 steps: at K =
# 1,000 (Gaussian rows, plain or with log-normal norms) the guess stops 2-6 float32 products earlier and the
# Newton steps still settle in one, 8-15% less time; no change at K = 50 and 200. Letting problems whose guess
# has stopped leave the batch early halved those products but needed a second Newton step: no faster.
GUESS_CHECK_EVERY = 2
MAX_GUESS_STEPS = 64
GUESS_DTYPE = torch.float32  # the guess only proposes free sets: half the time of float64 products
BLOCK_BYTES = 256 * 2**20  # the gathered free-set blocks of one batch: problems are chunked to stay below
CHOLESKY_MAX_WIDTH = 32  # free sets up to this size are solved by Cholesky (exact, cheap); wider ones by CG
CG_TOLERANCE = 1e-12  # relative residual of a CG solve; also the multipliers' tolerance for leaving a problem settled
CG_MAX_STEPS = 32  # per Newton step; unconverged problems then take the Cholesky solve
POWER_STEPS = 20  # power iterations for the guess's step size


def project_rows(gram: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: row ``b`` is ``argmin_{v >= lower[b]} v^T gram v``; ``gram`` symmetric positive
    semi-definite ``[K, K]``. Solved in float64 whatever the inputs' dtype (the answer in ``lower``'s): a
    float32 rescaling alone moves ill-conditioned problems' answers by percents. Problems whose Newton steps
    do not settle, or whose free-set block is singular, are solved one by one with NNLS."""
    work = torch.promote_types(torch.promote_types(gram.dtype, lower.dtype), torch.float64)
    gram = gram.to(work)
    gram = (gram + gram.T) / 2
    diagonal = gram.diagonal()
    scale = torch.where(diagonal > 0, diagonal, 1.0).sqrt()  # a zero row (G_ii = 0) is left as it is
    solution = _project_unit_diagonal(gram / scale[:, None] / scale[None, :], lower.to(work) * scale)
    bounded = torch.maximum(solution / scale, lower.to(work))  # v >= u exactly, whatever the rescaling rounded
    return bounded.to(lower.dtype)


def _project_unit_diagonal(gram: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    shift, settled = _newton(gram, lower)
    solution = lower + shift
    unsettled = ~settled
    rows = torch.arange(lower.shape[0], device=lower.device)
    if bool(unsettled.any()):
        root = psd_sqrt(gram.detach().cpu().numpy())  # float64 already (project_rows)
        for b in rows[unsettled].tolist():
            exact = nonneg_shift_qp(root, lower[b].detach().cpu().numpy())
            solution[b] = torch.as_tensor(np.asarray(exact), dtype=solution.dtype, device=solution.device)
    return solution


def _chunks(width: int, problems: int) -> list[tuple[int, int]]:
    """Consecutive ranges of problems whose gathered ``width x width`` float64 blocks fit :data:`BLOCK_BYTES`."""
    per_chunk = max(1, BLOCK_BYTES // (8 * width * width))
    return [(start, min(start + per_chunk, problems)) for start in range(0, problems, per_chunk)]


def _newton(gram: torch.Tensor, lower: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Primal-dual active-set steps for every problem of ``lower`` at once: the shifts ``z`` (``[B, K]``)
    and which problems settled (their free set repeated, so ``z`` satisfies the KKT conditions)."""
    linear = _times_gram(lower, gram)  # G u per problem (G symmetric)
    shift = _guess(gram, linear)  # CG's warm start where free sets are wide
    free = shift > 0
    settled = torch.zeros(lower.shape[0], dtype=torch.bool, device=lower.device)
    active = torch.arange(lower.shape[0], device=lower.device)  # problems still iterating
    for _ in range(MAX_NEWTON_STEPS):
        z, image, solvable, slack = _step(gram, linear[active], free[active], shift[active])
        multiplier = linear[active] + image
        next_free = torch.where(free[active], z > 0, multiplier < -slack[:, None])
        repeated = (next_free == free[active]).all(dim=1) & solvable
        shift[active] = z
        settled[active[repeated]] = True
        free[active] = next_free
        keep = ~repeated & solvable  # a singular block goes to the fallback, unsettled
        active = active[keep]
        if active.numel() == 0:
            break
    return shift, settled


def _times_gram(lower: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``lower @ gram``; by scaling rows when ``lower`` is a square diagonal, as UPGrad's ``I / K`` is (the
    same numbers: the product only adds zeros to them), without a ``K x K x K`` product."""
    if lower.shape[0] == lower.shape[1] and int(lower.count_nonzero()) == int(lower.diagonal().count_nonzero()):
        return lower.diagonal()[:, None] * gram
    return lower @ gram


def _step(
    gram: torch.Tensor, linear: torch.Tensor, free: torch.Tensor, previous: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Newton step's solve on every problem's free set: ``z``, ``z @ gram``, which problems had a
    solution, and the slack below zero up to which a multiplier counts as zero (0 after an exact Cholesky
    solve, whose ``z @ gram`` is a fresh product; after CG, its tolerance relative to the problem's ``|G u|``,
    and ``z @ gram`` is accumulated by the CG steps)."""
    if free.numel() == 0 or int(free.sum(dim=1).max()) <= CHOLESKY_MAX_WIDTH:
        z, solvable = _solve_on_free_sets(gram, linear, free)
        return z, z @ gram, solvable, torch.zeros_like(linear[:, 0])
    z, converged, image = free_set_cg.solve_on_free_sets(
        gram, -linear, free, previous, tolerance=CG_TOLERANCE, max_steps=CG_MAX_STEPS
    )
    slack = CG_TOLERANCE * linear.abs().amax(dim=1)
    solvable = torch.ones_like(converged)
    if not bool(converged.all()):  # exactly, by Cholesky, as narrow free sets are
        exact, solvable[~converged] = _solve_on_free_sets(gram, linear[~converged], free[~converged])
        z[~converged], image[~converged], slack[~converged] = exact, exact @ gram, 0.0
    return z, image, solvable, slack


def _guess(gram: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """``z`` after some accelerated projected-gradient steps from ``z = 0`` (FISTA; Beck & Teboulle, SIAM J.
    Imaging Sci. 2009), all problems at once by matrix products, in :data:`GUESS_DTYPE` (returned in
    ``gram``'s), with step ``1 /`` :func:`largest_eigenvalue_bound`. Only a starting guess: where ``z > 0``
    is, on well-conditioned Gramians, usually the final free set, so one Newton step settles; elsewhere the
    Newton steps correct it. Also CG's warm start."""
    guessed = torch.zeros_like(linear)
    conflicted = (linear < 0).any(dim=1)  # a problem without any is solved by z = 0 (its multipliers G u >= 0)
    if not bool(conflicted.any()):
        return guessed
    step = 1.0 / max(largest_eigenvalue_bound(gram), 1e-300)
    linear, gram = linear[conflicted].to(GUESS_DTYPE), gram.to(GUESS_DTYPE)
    z = torch.zeros_like(linear)
    momentum, t, guess = z, 1.0, None
    scaled_linear = step * linear
    for done in range(1, MAX_GUESS_STEPS + 1):
        # clamp(momentum - step (momentum G + G u), 0), with the product and its sum fused
        following = torch.addmm(momentum - scaled_linear, momentum, gram, alpha=-step).clamp_(min=0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = torch.sub(following, z).mul_((t - 1) / t_next).add_(following)
        z, t = following, t_next
        if done % GUESS_CHECK_EVERY == 0:  # stop once the guessed sets no longer move
            previous, guess = guess, z > 0
            if previous is not None and torch.equal(previous, guess):
                break
    guessed[conflicted] = z.to(guessed.dtype)
    return guessed


def largest_eigenvalue_bound(gram: torch.Tensor) -> float:
    """About the largest eigenvalue of the symmetric PSD ``gram``, from above when the estimate is good: 1.1
    times the Rayleigh quotient after :data:`POWER_STEPS` power iterations from the all-ones vector, capped by
    the largest absolute row sum (Gershgorin's bound, which is never below it). The cap alone, FISTA's safe
    step, is several times too large on many nearly orthogonal rows (1,000 Gaussian rows of 100,000 numbers,
    unit diagonal: 3.78 against a largest eigenvalue of 1.21; this bound gives 1.28), and FISTA then needs
    several times the steps."""
    gershgorin = float(gram.abs().sum(dim=1).max())
    vector = torch.ones_like(gram[0])
    estimate = 0.0
    for _ in range(POWER_STEPS):
        image = gram @ vector
        norm = float(image.norm())
        if norm == 0:
            break
        estimate = float(vector @ image) / float(vector @ vector)
        vector = image / norm
    return min(gershgorin, 1.1 * estimate) if estimate > 0 else gershgorin


def _solve_on_free_sets(
    gram: torch.Tensor, linear: torch.Tensor, free: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` with ``z_F = -(G_FF)^{-1} (G u)_F`` and ``z = 0`` off each problem's free set ``F``; and which
    problems' blocks had a Cholesky factor. Problems are solved in batches whose blocks fit :data:`BLOCK_BYTES`."""
    problems = linear.shape[0]
    width = int(free.sum(dim=1).max()) if problems else 0
    z = torch.empty_like(linear)
    solvable = torch.empty(problems, dtype=torch.bool, device=linear.device)
    for start, stop in _chunks(max(width, 1), problems):
        z[start:stop], solvable[start:stop] = _cholesky_on_free_sets(gram, linear[start:stop], free[start:stop])
    return z, solvable


def _cholesky_on_free_sets(
    gram: torch.Tensor, linear: torch.Tensor, free: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_solve_on_free_sets` for one batch: the blocks, padded to the widest, factorized together."""
    problems, k = linear.shape
    counts = free.sum(dim=1)
    width = int(counts.max())  # may be 0 in a batch: empty blocks, z = 0
    # Padding without masks: slot j past a problem's free indices points at coordinate k + j of a Gramian
    # extended by an identity block (and a zero right-hand side), so a gathered block is [[G_FF, 0], [0, I]].
    extended = torch.zeros(k + width, k + width, dtype=gram.dtype, device=gram.device)
    extended[:k, :k] = gram
    extended[k:, k:] = torch.eye(width, dtype=gram.dtype, device=gram.device)
    slots = torch.arange(width, device=linear.device)
    real = slots[None, :] < counts[:, None]
    free_first = torch.argsort((~free).to(torch.int8), dim=1, stable=True)[:, :width]
    index = torch.where(real, free_first, k + slots[None, :])
    block = extended[index[:, :, None], index[:, None, :]]
    rhs = -torch.cat([linear, torch.zeros(problems, width, dtype=linear.dtype, device=linear.device)], dim=1)
    factor, info = torch.linalg.cholesky_ex(block)
    solvable = info == 0
    solved = torch.cholesky_solve(rhs.gather(1, index)[:, :, None], factor)[:, :, 0]
    solved[~solvable] = 0  # no factor: the problem goes to the fallback
    z = torch.zeros(problems, k + width, dtype=linear.dtype, device=linear.device)
    z.scatter_(1, index, solved)
    return z[:, :k], solvable
