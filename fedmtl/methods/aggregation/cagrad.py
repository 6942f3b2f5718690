"""CAGrad, "Conflict-Averse Gradient Descent for Multi-task Learning" (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.methods.aggregation._solvers import mean_diagonal_scale, minimize_on_simplex, to_numpy, to_weights
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
    """``argmin_{w in simplex} w^T gram 1/K + radius * sqrt(w^T gram w)`` by SLSQP from the uniform point."""
    k = gram.shape[0]
    if k == 1:
        return np.ones(1)
    uniform = np.full(k, 1.0 / k)
    towards_mean = gram @ uniform

    def objective(w: np.ndarray) -> float:
        return float(w @ towards_mean + radius * math.sqrt(w @ gram @ w + SQRT_EPS))

    def gradient(w: np.ndarray) -> np.ndarray:
        return towards_mean + radius * (gram @ w) / math.sqrt(w @ gram @ w + SQRT_EPS)

    return minimize_on_simplex(objective, gradient, uniform, np.zeros(k), np.ones(k))


@dataclass(frozen=True)
class CAGrad(GramianAggregator):
    """CAGrad (Liu, Liu, Jin, Stone, Liu; NeurIPS 2021), official-code variant, on the Gramian.

    With ``g0`` the mean row and ``||g0||^2 = mean(G G^T)`` (the official ``GG.mean()``):
    ``w = argmin_{w in simplex} g_w . g0 + c ||g0|| ||g_w||`` where ``g_w = w @ G``,
    ``lambda = c ||g0|| / ||g_w||``, ``d = g0 + lambda g_w``. The inner problem is solved like the
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
