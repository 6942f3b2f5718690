"""CAGrad, "Conflict-Averse Gradient Descent for Multi-task Learning" (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.methods.aggregation._solvers import (
    MAX_ACTIVE_SET_STEPS,
    mean_diagonal_scale,
    minimize_on_simplex,
    to_numpy,
    to_weights,
)
from fedmtl.methods.aggregation.base import AggregationInput, GramianAggregator

# The official code's three output scalings of d = g0 + lambda g_w, as functions of c.
RESCALE_DIVISORS: dict[int, Callable[[float], float]] = {
    0: lambda c: 1.0,
    1: lambda c: 1.0 + c * c,
    2: lambda c: 1.0 + c,
}
# Keeps sqrt(w^T G w) differentiable for SLSQP on the unit-mean-diagonal Gramian (official: 1e-8 on G G^T).
SQRT_EPS = 1e-14
# Floor on ||g_w||^2 / rms^2 when forming lambda: lambda * g_w then has norm <= c ||g0||.
NORM_FLOOR = 1e-24


def conflict_averse_weights(gram: np.ndarray, radius: float) -> np.ndarray:
    """``argmin_{w in simplex} w^T gram 1/K + radius * sqrt(w^T gram w)``: by :func:`active_set_weights`
    where its steps settle, else by SLSQP from the uniform point."""
    k = gram.shape[0]
    if k == 1:
        return np.ones(1)
    settled = active_set_weights(gram, radius)
    if settled is not None:
        return settled
    uniform = np.full(k, 1.0 / k)
    towards_mean = gram @ uniform

    def objective(w: np.ndarray) -> float:
        return float(w @ towards_mean + radius * math.sqrt(w @ gram @ w + SQRT_EPS))

    def gradient(w: np.ndarray) -> np.ndarray:
        return towards_mean + radius * (gram @ w) / math.sqrt(w @ gram @ w + SQRT_EPS)

    return minimize_on_simplex(objective, gradient, uniform, np.zeros(k), np.ones(k))


def active_set_weights(gram: np.ndarray, radius: float) -> np.ndarray | None:
    """The inner problem's exact solution by primal-dual active-set steps (the strategy of Hintermüller, Ito
    & Kunisch, SIAM J. Optim. 13(3), 2002, on this problem's optimality conditions), or None where they do
    not settle.

    With ``b = G 1/K``, ``s = sqrt(w^T G w) > 0`` and support ``S``, optimality is ``b_S + r G_SS w_S / s =
    mu 1`` on ``S``, ``b_i + r (G w)_i / s >= mu`` off it, ``w_S > 0`` and ``sum w = 1``. Given ``S``, with
    ``x = G_SS^-1 1`` and ``y = G_SS^-1 b_S``: ``w_S = (s / r)(mu x - y)``, and ``w^T G w = s^2`` is the
    quadratic ``mu^2 1.x - 2 mu 1.y + b_S.y = r^2``, whose larger root gives ``mu`` and then
    ``s = r / (mu 1.x - 1.y)`` from the sum: two solves with one Cholesky factor a step. The next support
    keeps the positive ``w_i`` and adds every ``i`` whose condition fails; when it repeats, every condition
    holds (a stationary point of the convex objective where it is differentiable: the minimum). Where the
    quadratic has no such root (the objective is unbounded below on the support's affine hull, as on the
    first, full support when few rows are nearly dependent) the step solves the same equations with ``s``
    fixed at the last iterate's ``sqrt(w^T G w)`` (the quadratic program ``min b.w + r w^T G w / (2 s)``
    on the face), which only moves the support; only an exact step can end the iteration. None where
    ``G_SS`` has no Cholesky factor (dependent rows) or the support does not settle in
    :data:`MAX_ACTIVE_SET_STEPS` steps (e.g. ``c >= 1`` with the origin in the rows' hull: the minimum has
    ``s = 0``, where no exact step exists).
    """
    from scipy.linalg import cho_solve  # imported when the solver first runs

    k = len(gram)
    towards_mean = gram @ np.full(k, 1.0 / k)
    support = np.ones(k, dtype=bool)
    norm = math.sqrt(max(float(towards_mean.mean()), 0.0)) or 1.0  # s's first estimate: the mean row's norm
    for _ in range(MAX_ACTIVE_SET_STEPS):
        try:
            factor = np.linalg.cholesky(gram[np.ix_(support, support)])
        except np.linalg.LinAlgError:
            return None
        solved = cho_solve((factor, True), np.stack([np.ones(int(support.sum())), towards_mean[support]], axis=1))
        x, y = solved[:, 0], solved[:, 1]
        a, b, c = x.sum(), y.sum(), towards_mean[support] @ y  # a > 0: G_SS is positive definite
        discriminant = b * b - a * (c - radius * radius)
        exact = discriminant > 0
        # the larger root; or, where there is none (the objective is unbounded below on this support's affine
        # hull), the QP step with s fixed at ``norm``
        mu = (b + math.sqrt(discriminant)) / a if exact else (radius / norm + b) / a
        r_over_s = mu * a - b  # positive: sqrt(discriminant) for the larger root, r / norm for the QP step
        w = np.zeros(k)
        w[support] = (mu * x - y) / r_over_s  # (s / r)(mu x - y), which sums to 1
        condition = towards_mean + r_over_s * (gram @ w)
        following = np.where(support, w > 0, condition < mu)
        if exact and np.array_equal(following, support):
            return w
        support = following
        norm = math.sqrt(max(float(w @ gram @ w), 0.0)) or norm
    return None


@dataclass(frozen=True)
class CAGrad(GramianAggregator):
    """CAGrad (Liu, Liu, Jin, Stone, Liu; NeurIPS 2021), official-code variant, on the Gramian.

    With ``g0`` the mean row and ``||g0||^2 = mean(G G^T)`` (the official ``GG.mean()``):
    ``w = argmin_{w in simplex} g_w . g0 + c ||g0|| ||g_w||`` where ``g_w = w @ G``,
    ``lambda = c ||g0|| / ||g_w||``, ``d = g0 + lambda g_w``. The inner problem is solved exactly by
    active-set steps (:func:`active_set_weights`) where they settle; otherwise like the
    official code, by SLSQP over the simplex (bounds ``[0, 1]``, ``sum w = 1``), here in float64
    with an analytic gradient and ``ftol`` 1e-15 on a Gramian rescaled to unit mean diagonal; the
    official ``+1e-8`` safeguards are replaced by a ``1e-14`` term under the square root (relative
    to that scale). Accuracy (tested): the optimality conditions of the inner problem (``g_i . d``
    equal over the support of ``w`` and no smaller elsewhere) hold to ~1e-6 relative for ``c < 1``.
    For ``c >= 1`` with the origin in the convex hull of the rows the inner minimum sits at
    ``g_w = 0`` and ``d`` is not unique (the paper assumes ``0 <= c < 1``).

    ``c`` is the paper's ``alpha`` / the official ``alpha`` (0.4 on NYUv2 in the paper).

    Scale. For ``K`` identical rows ``g``, ``d = (1 + c) g``; the official ``rescale`` modes return
    ``0``: ``d`` = ``(1 + c) g``, ``1``: ``d / (1 + c^2)`` = ``(1 + c) / (1 + c^2) g``,
    ``2``: ``d / (1 + c)`` = ``g``. With ``mean_scaled: true`` (default) the output is
    ``d / (1 + c)`` whatever ``rescale`` is, so identical rows give exactly ``g``: the three modes
    only differ by constant factors, and the mean-scale convention fixes that factor. Set
    ``mean_scaled: false`` to get the official scaling of the chosen mode. ``weights`` are
    ``(1/K + lambda w) / divisor``. With ``c = 0`` the result is the plain mean.
    """

    name: ClassVar[str] = "cagrad"
    c: float = 0.4
    rescale: Literal[0, 1, 2] = 1
    mean_scaled: bool = True

    def __post_init__(self) -> None:
        if self.c < 0:
            raise ValueError(f"c must be >= 0, got {self.c}")
        if isinstance(self.rescale, bool) or self.rescale not in RESCALE_DIVISORS:
            raise ValueError(f"rescale must be one of {sorted(RESCALE_DIVISORS)}, got {self.rescale!r}")

    @property
    def divisor(self) -> float:
        """What ``d`` is divided by: ``1 + c`` when mean-scaled, else the ``rescale`` mode's factor."""
        return 1.0 + self.c if self.mean_scaled else RESCALE_DIVISORS[self.rescale](self.c)

    def weights_from_gramian(self, gram: torch.Tensor, inputs: AggregationInput) -> torch.Tensor:
        array = to_numpy(gram)
        k = array.shape[0]
        unit = array / mean_diagonal_scale(array)
        uniform = np.full(k, 1.0 / k)
        radius = self.c * math.sqrt(max(float(uniform @ unit @ uniform), 0.0))
        combination = uniform
        if radius > 0:
            w = conflict_averse_weights(unit, radius)
            lam = radius / math.sqrt(max(float(w @ unit @ w), NORM_FLOOR))
            combination = uniform + lam * w
        return to_weights(combination / self.divisor, gram)
