"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, ICML 2022,
"Multi-Task Learning as a Bargaining Game").

The Nash bargaining weights solve ``M alpha = 1 / alpha`` (elementwise) with ``M = G G^T`` and
``alpha > 0``. That is exactly the stationarity condition of the strictly convex
``f(alpha) = 1/2 alpha^T M alpha - sum_i log(alpha_i)`` on ``alpha > 0``, so it is solved here by
Newton's method: damped by a backtracking line search that keeps ``alpha`` positive while far from
the solution, and full steps once the Newton decrement is below 1/4 (``f`` is self-concordant, so
such a step stays positive and converges quadratically; Boyd & Vandenberghe, Convex Optimization,
9.6; a step that rounding still takes across zero is line-searched instead), to a residual of
``tolerance`` relative to ``1 / alpha``. The official code and torchjd approximate it by up to 20
sequential convex programs with cvxpy and stop at a residual of 1e-3.
At the solution every row has a positive inner product with the direction:
``g_i . G^T alpha = (M alpha)_i = 1/alpha_i > 0``.

When ``M`` is singular a positive null vector can make ``f`` unbounded (no bargaining solution
exists); ``ridge`` (relative to ``trace(M)/K``) adds ``ridge * I`` so that one always does.

Scale: the official code clips the aggregate to norm 1; here the weights are divided by
``sum(alpha)``, so the aggregate is a convex combination of the rows (mean-scaled: identical
rows give that row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.methods.aggregation.base import AggregationInput, GramianAggregator

_MAX_NEWTON_STEPS = 200
_FULL_STEP_DECREMENT = 0.25  # below it a full Newton step is safe (self-concordance)


def nash_weights(gram: torch.Tensor, ridge: float, tolerance: float = 1e-12) -> torch.Tensor:
    """Positive ``alpha`` with ``(M + ridge*tr(M)/K I) alpha = 1/alpha`` (float64 Newton iterations).

    Solved on the CPU (``K x K`` is tiny; each iteration would otherwise synchronise the device);
    returned on ``gram``'s device."""
    m = gram.detach().to("cpu", torch.float64)
    k = m.shape[0]
    scale = float(torch.trace(m)) / k
    if scale <= 0:
        return torch.ones(k, dtype=torch.float64, device=gram.device)
    m = m / scale + ridge * torch.eye(k, dtype=torch.float64, device=m.device)  # scale-free problem; undone below

    def objective(a: torch.Tensor) -> float:
        return float(0.5 * a @ m @ a - torch.log(a).sum())

    alpha = 1.0 / m.diagonal().sqrt()
    for _ in range(_MAX_NEWTON_STEPS):
        gradient = m @ alpha - 1.0 / alpha
        if float(gradient.norm()) <= tolerance * float((1.0 / alpha).norm()):
            break
        step = torch.linalg.solve(m + torch.diag(alpha**-2), -gradient)
        decrement_squared = -float(gradient @ step)
        # positive in exact arithmetic, checked all the same: rounding breaks it on ill-conditioned problems
        if decrement_squared < _FULL_STEP_DECREMENT**2 and bool((alpha + step > 0).all()):
            alpha = alpha + step  # near the solution the line search's decrease drowns in rounding
            continue
        t, current = 1.0, objective(alpha)
        while bool((alpha + t * step <= 0).any()) or objective(alpha + t * step) > current + 1e-4 * t * float(
            gradient @ step
        ):
            t *= 0.5  # ends by t = 0 at the latest: alpha itself passes both tests
        alpha = alpha + t * step
    return (alpha / scale**0.5).to(gram.device)


@dataclass(frozen=True)
class NashMTL(GramianAggregator):
    name: ClassVar[str] = "nash_mtl"
    ridge: float = 1e-8  # > 0; times trace(G G^T)/K on the diagonal, so that dependent rows still have a solution

    def __post_init__(self) -> None:
        if self.ridge <= 0:  # with 0, linearly dependent rows can leave the problem without a solution
            raise ValueError(f"ridge must be > 0, got {self.ridge}")

    def weights_from_gramian(self, gram: torch.Tensor, inputs: AggregationInput) -> torch.Tensor:
        alpha = nash_weights(gram, self.ridge)
        return alpha / alpha.sum()
