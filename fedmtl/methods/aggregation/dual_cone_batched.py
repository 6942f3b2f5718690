"""Many dual-cone projections on one Gramian, solved together: ``argmin_{v >= u_b} v^T G v`` for every row
``u_b`` of ``U``.

UPGrad (Quinton & Rey, arXiv 2406.16232) projects each of the ``K`` rows onto the dual cone of all rows,
which torchjd solves as ``K`` separate quadratic programs (one quadprog call each). All ``K`` share the
Gramian ``G``; only the lower bound differs. Each is a linear complementarity problem with the positive
definite matrix ``G`` (``z = v - u >= 0``, ``lambda = G (u + z) >= 0``, ``z^T lambda = 0``), and the
primal-dual active-set method (Hintermüller, Ito & Kunisch, "The primal-dual active set strategy as a
semismooth Newton method", SIAM J. Optim. 13(3), 2002) solves it in a few Newton steps, each one linear
solve on the current free set. Here the steps of all problems run as one batch of Cholesky solves on the
gathered free-set blocks (padded to the largest), in float64, on the Gramian's device.

Exactness: a problem stops when its free set repeats, which certifies the KKT conditions (``z > 0`` on the
free set, where ``lambda = 0`` by the solve; ``lambda >= 0`` where ``z = 0``), so the answer is the exact
optimum up to the rounding of one Cholesky solve. Active-set Newton steps may cycle on some positive
definite matrices, and a singular block (``reg_eps = 0`` with dependent rows) has no Cholesky factor: such
problems, if any, are handed to the per-row NNLS solver (:func:`~._solvers.nonneg_shift_qp`).
"""

from __future__ import annotations

import numpy as np
import torch

from fedmtl.methods.aggregation._solvers import nonneg_shift_qp, psd_sqrt

MAX_NEWTON_STEPS = 50  # a cap against cycling: converging problems need a few (one or two on the benchmark Gramians)
# projected-gradient steps that guess the free sets before the first Newton step: until the guess has not
# moved over GUESS_CHECK_EVERY steps, at most MAX_GUESS_STEPS
GUESS_CHECK_EVERY = 8
MAX_GUESS_STEPS = 64
BLOCK_BYTES = 256 * 2**20  # the gathered free-set blocks of one batch: problems are chunked to stay below


def project_rows(gram: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: row ``b`` is ``argmin_{v >= lower[b]} v^T gram v``; ``gram`` symmetric positive
    semi-definite ``[K, K]``, float64 recommended. Problems whose Newton steps do not settle, or whose
    free-set block is singular, are solved one by one with NNLS."""
    gram = (gram + gram.T) / 2
    solution = lower.clone()
    unsettled = torch.ones(lower.shape[0], dtype=torch.bool, device=lower.device)
    rows = torch.arange(lower.shape[0], device=lower.device)
    for start, stop in _chunks(gram.shape[0], lower.shape[0]):
        shift, settled = _newton(gram, lower[start:stop])
        solution[start:stop] += shift
        unsettled[start:stop] = ~settled
    if bool(unsettled.any()):
        root = psd_sqrt(gram.detach().to("cpu", torch.float64).numpy())
        for b in rows[unsettled].tolist():
            exact = nonneg_shift_qp(root, lower[b].detach().to("cpu", torch.float64).numpy())
            solution[b] = torch.as_tensor(np.asarray(exact), dtype=solution.dtype, device=solution.device)
    return solution


def _chunks(k: int, problems: int) -> list[tuple[int, int]]:
    per_chunk = max(1, BLOCK_BYTES // (8 * k * k))
    return [(start, min(start + per_chunk, problems)) for start in range(0, problems, per_chunk)]


def _newton(gram: torch.Tensor, lower: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Primal-dual active-set steps for every problem of ``lower`` at once: the shifts ``z`` (``[B, K]``)
    and which problems settled (their free set repeated, so ``z`` satisfies the KKT conditions)."""
    linear = lower @ gram  # G u per problem (G symmetric)
    free = _guess_free_sets(gram, linear)
    shift = torch.zeros_like(lower)
    settled = torch.zeros(lower.shape[0], dtype=torch.bool, device=lower.device)
    active = torch.arange(lower.shape[0], device=lower.device)  # problems still iterating
    for _ in range(MAX_NEWTON_STEPS):
        z, solvable = _solve_on_free_sets(gram, linear[active], free[active])
        multiplier = linear[active] + z @ gram
        next_free = torch.where(free[active], z > 0, multiplier < 0)
        repeated = (next_free == free[active]).all(dim=1) & solvable
        shift[active] = z
        settled[active[repeated]] = True
        free[active] = next_free
        keep = ~repeated & solvable  # a singular block goes to the fallback, unsettled
        active = active[keep]
        if active.numel() == 0:
            break
    return shift, settled


def _guess_free_sets(gram: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """Where ``z > 0`` after some accelerated projected-gradient steps from ``z = 0`` (FISTA; Beck &
    Teboulle, SIAM J. Imaging Sci. 2009), all problems at once by matrix products. Only a starting guess:
    on well-conditioned Gramians it is usually the final free set, so one Newton step settles; elsewhere
    the Newton steps correct it."""
    free = linear < 0  # a problem without any is solved by z = 0 (its multipliers G u are all >= 0)
    conflicted = free.any(dim=1)
    if not bool(conflicted.any()):
        return free
    linear = linear[conflicted]
    step = 1.0 / max(float(gram.abs().sum(dim=1).max()), 1e-300)  # Gershgorin: >= the largest eigenvalue
    z = torch.zeros_like(linear)
    momentum, t, guess = z, 1.0, None
    for done in range(1, MAX_GUESS_STEPS + 1):
        following = torch.clamp(momentum - step * (momentum @ gram + linear), min=0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = following + ((t - 1) / t_next) * (following - z)
        z, t = following, t_next
        if done % GUESS_CHECK_EVERY == 0:  # stop once the guessed sets no longer move
            previous, guess = guess, z > 0
            if previous is not None and torch.equal(previous, guess):
                break
    free[conflicted] = z > 0
    return free


def _solve_on_free_sets(
    gram: torch.Tensor, linear: torch.Tensor, free: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` with ``z_F = -(G_FF)^{-1} (G u)_F`` and ``z = 0`` off each problem's free set ``F``; and which
    problems' blocks had a Cholesky factor."""
    problems, k = linear.shape
    counts = free.sum(dim=1)
    width = int(counts.max()) if problems else 0
    if width == 0:
        return torch.zeros_like(linear), torch.ones(problems, dtype=torch.bool, device=linear.device)
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
