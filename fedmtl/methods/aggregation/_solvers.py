"""Small float64 solvers on ``K x K`` Gramians, shared by the Gramian-based aggregators.

Everything here runs in NumPy on the CPU (SciPy imported when a solver first runs): ``K`` is the number of clients or tasks (tens to a
few hundred), so moving a ``K x K`` matrix off the accelerator costs nothing next to the
``K x P`` Gramian pass, and it avoids one device synchronisation per solver iteration.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

# Gramians are rescaled to unit mean diagonal before solving, so absolute tolerances are meaningful.
SLSQP_FTOL = 1e-15
SLSQP_MAXITER = 2000
NNLS_MAXITER_PER_ROW = 50
MAX_ACTIVE_SET_STEPS = 30  # primal-dual active-set steps (MGDA, CAGrad) before the fallback (converging problems: 1-8)


def to_numpy(gram: torch.Tensor) -> np.ndarray:
    """A detached float64 NumPy copy of a (symmetric) Gramian."""
    array = gram.detach().to("cpu", torch.float64).numpy()
    return (array + array.T) / 2


def to_weights(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``[K]`` float64 weights on ``like``'s device."""
    return torch.as_tensor(array, dtype=torch.float64, device=like.device)


def mean_diagonal_scale(gram: np.ndarray) -> float:
    """Mean squared row norm (``trace / K``); 1 for an all-zero Gramian so that dividing is a no-op."""
    scale = float(np.trace(gram)) / gram.shape[0]
    return scale if scale > 0 else 1.0


def psd_sqrt(gram: np.ndarray) -> np.ndarray:
    """Symmetric square root ``S`` with ``S @ S = gram`` (negative rounding eigenvalues clipped)."""
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def min_norm_simplex(gram: np.ndarray) -> np.ndarray:
    """Exact ``argmin_{w in simplex} w^T gram w``: by :func:`min_norm_active_set` where its steps settle,
    otherwise by one non-negative least-squares solve.

    With ``S^T S = gram``, minimise ``||S u||^2 + (1^T u - 1)^2`` over ``u >= 0``. Writing
    ``u = t w`` with ``w`` in the simplex, the inner minimum over ``w`` is ``t^2 delta`` where
    ``delta`` is the min-norm value, so the solution is ``u* = w* / (1 + delta)`` and
    ``w* = u* / sum(u*)``. Lawson-Hanson's active-set NNLS terminates with the exact active set,
    so the result is exact up to rounding (no iteration tolerance).
    """
    from scipy.optimize import nnls  # imported when a solver first runs

    k = gram.shape[0]
    if k == 1:
        return np.ones(1)
    normalised = gram / mean_diagonal_scale(gram)
    settled = min_norm_active_set(normalised)
    if settled is not None:
        return settled
    design = np.vstack([psd_sqrt(normalised), np.ones((1, k))])
    target = np.zeros(k + 1)
    target[-1] = 1.0
    u, _ = nnls(design, target, maxiter=NNLS_MAXITER_PER_ROW * k)
    return u / u.sum()


def min_norm_active_set(gram: np.ndarray, max_steps: int = MAX_ACTIVE_SET_STEPS) -> np.ndarray | None:
    """``argmin_{w in simplex} w^T gram w`` by primal-dual active-set steps (Hintermüller, Ito & Kunisch, SIAM
    J. Optim. 13(3), 2002), or None where they do not settle within ``max_steps`` or a support's block has
    no Cholesky factor (dependent rows): then :func:`min_norm_simplex` solves it by NNLS.

    On a support ``S`` the optimality conditions ``G_SS w_S = mu 1``, ``sum w = 1`` give ``w_S = x / 1.x``
    with ``x = G_SS^-1 1`` and ``mu = 1 / 1.x``; off it they ask ``(G w)_i >= mu``. The next support keeps
    the positive ``w_i`` and adds every ``i`` whose condition fails; when it repeats, all conditions hold
    and ``w`` is the minimum. One Cholesky solve a step, from the full support (a few steps on 1,000 rows)."""
    from scipy.linalg import cho_solve  # imported when the solver first runs

    k = len(gram)
    support = np.ones(k, dtype=bool)
    for _ in range(max_steps):
        try:
            factor = np.linalg.cholesky(gram[np.ix_(support, support)])
        except np.linalg.LinAlgError:
            return None
        x = cho_solve((factor, True), np.ones(int(support.sum())))
        total = float(x.sum())  # > 0: G_SS is positive definite
        w = np.zeros(k)
        w[support] = x / total
        following = np.where(support, w > 0, gram @ w < 1.0 / total)
        if np.array_equal(following, support):
            return w
        support = following
    return None


def min_norm_simplex_box(gram: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``argmin w^T gram w`` over the simplex intersected with the box ``lower <= w <= upper``.

    The unconstrained-by-box solution (exact, :func:`min_norm_simplex`) is returned when it lies in
    the box; otherwise SLSQP (float64, ``ftol`` 1e-15 on the unit-mean-diagonal Gramian) starts from
    a feasible point of the box. The caller guarantees the set is non-empty
    (``sum(lower) <= 1 <= sum(upper)``).
    """
    w = min_norm_simplex(gram)
    if np.all(w >= lower - 1e-12) and np.all(w <= upper + 1e-12):
        return w
    if np.all(upper - lower <= 0):
        return lower / lower.sum()
    normalised = gram / mean_diagonal_scale(gram)
    start = _feasible_start(lower, upper)
    return minimize_on_simplex(lambda v: float(v @ normalised @ v), lambda v: 2 * normalised @ v, start, lower, upper)


def _feasible_start(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """A point of the box whose coordinates sum to 1: move from ``lower`` towards ``upper``."""
    slack = 1.0 - lower.sum()
    room = upper - lower
    return lower + room * (slack / room.sum())


def minimize_on_simplex(
    fun: Callable[[np.ndarray], float],
    jac: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> np.ndarray:
    """SLSQP for a smooth convex ``fun`` over ``{sum w = 1, lower <= w <= upper}``.

    The result is clipped into the box and rescaled to sum 1 (SLSQP satisfies both to ~1e-15).
    A solver failure is reported with a ``RuntimeWarning`` rather than hidden: the returned point is
    still feasible, only its optimality is in doubt.
    """
    from scipy.optimize import minimize  # imported when a solver first runs

    k = start.shape[0]
    result = minimize(
        fun,
        start,
        jac=jac,
        method="SLSQP",
        bounds=list(zip(lower, upper)),
        constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1.0, "jac": lambda v: np.ones(k)}],
        options={"ftol": SLSQP_FTOL, "maxiter": SLSQP_MAXITER},
    )
    if not result.success:
        message = f"SLSQP on the simplex did not converge ({result.message}); using its last iterate"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    w = np.clip(result.x, lower, upper)
    return w / w.sum()


NNLS_RIDGE = 1e-12  # on a trace-normalised Gramian: moves the optimum's value by ~1e-12, no more


def nonneg_shift_qp(gram_sqrt: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """``argmin_{v >= lower} v^T S^T S v`` with ``S = gram_sqrt``: NNLS on ``z = v - lower``.

    A singular ``S`` (zero rows, antiparallel rows) leaves the NNLS subproblems rank-deficient, where
    SciPy's Lawson-Hanson returns huge, non-optimal ``z`` (found by a property test: the direction then
    depended on the order of the rows). A ridge ``NNLS_RIDGE ||z||^2`` makes every subproblem full-rank
    and picks the smallest shift among equal optima; on a trace-normalised Gramian it changes the
    optimum's value by about ``1e-12``.
    """
    from scipy.optimize import nnls  # imported when a solver first runs

    k = lower.shape[0]
    design = np.vstack([gram_sqrt, np.sqrt(NNLS_RIDGE) * np.eye(k)])
    target = np.concatenate([-gram_sqrt @ lower, np.zeros(k)])
    z, _ = nnls(design, target, maxiter=NNLS_MAXITER_PER_ROW * k)
    return lower + z
