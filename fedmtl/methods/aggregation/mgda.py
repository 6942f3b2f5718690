"""MGDA (Sener & Koltun, NeurIPS 2018) with the FedMGDA+ bound (Hu et al., IEEE TNSE 2022)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.methods.aggregation._solvers import min_norm_simplex, min_norm_simplex_box, to_numpy, to_weights
from fedmtl.methods.aggregation.base import AggregationInput, GramianAggregator

Normalization = Literal["none", "l2", "loss", "loss+"]


def _positive_losses(inputs: AggregationInput, normalization: str) -> np.ndarray:
    if inputs.losses is None:
        raise ValueError(f"mgda normalization {normalization!r} needs losses")
    losses = inputs.losses.detach().to("cpu", torch.float64).numpy()
    if np.any(losses <= 0):
        raise ValueError(f"mgda normalization {normalization!r} needs positive losses, got {losses.tolist()}")
    return losses


# Divisors s_i of the rows given the row norms, as in the MGDA-UB code (``gradient_normalizers``).
_ROW_SCALES: dict[str, Callable[[np.ndarray, AggregationInput], np.ndarray]] = {
    "none": lambda norms, inputs: np.ones_like(norms),
    "l2": lambda norms, inputs: norms,
    "loss": lambda norms, inputs: _positive_losses(inputs, "loss"),
    "loss+": lambda norms, inputs: _positive_losses(inputs, "loss+") * norms,
}


def row_scales(gram: np.ndarray, inputs: AggregationInput, normalization: Normalization) -> np.ndarray:
    """Divisors ``s_i``: ``none`` 1, ``l2`` ``||g_i||``, ``loss`` ``loss_i``, ``loss+`` ``loss_i * ||g_i||``.

    A zero row counts as norm 1 (it stays the zero vector).
    """
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    return _ROW_SCALES[normalization](np.where(norms > 0, norms, 1.0), inputs)


def deviation_box(center: np.ndarray, max_deviation: float) -> tuple[np.ndarray, np.ndarray]:
    """FedMGDA+'s box ``max(0, c - eps) <= w <= min(1, c + eps)``."""
    return np.clip(center - max_deviation, 0.0, 1.0), np.clip(center + max_deviation, 0.0, 1.0)


@dataclass(frozen=True)
class MGDA(GramianAggregator):
    """MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

    Variant implemented: divide each row by ``s_i`` (``normalization``, as in the authors' MGDA-UB
    code: ``none``, ``l2`` = ``||g_i||``, ``loss`` = ``loss_i``, ``loss+`` = ``loss_i * ||g_i||``),
    then take the min-norm point of the convex hull of the normalised rows,
    ``w = argmin_{w in simplex} w^T Ghat w`` with ``Ghat = D^-1 G G^T D^-1``. The solver is exact
    (one Lawson-Hanson NNLS solve, see ``_solvers.min_norm_simplex``), unlike the Frank-Wolfe loop
    of the paper's code. The direction ``sum_i w_i g_i / s_i`` has a non-negative inner product with
    every row.

    ``max_deviation`` (FedMGDA+, Hu, Guo, Li, Pan, Zhang, Yu; "Federated Learning Meets
    Multi-Objective Optimization", IEEE TNSE 2022): additionally constrain
    ``|w - center|_inf <= max_deviation``, ``center`` being uniform or the ``num_examples``
    shares (``deviation_center``; the easyFL port uses the latter). The box only matters when the
    exact min-norm point leaves it; then SLSQP solves the box-constrained QP (float64,
    ``ftol`` 1e-15; KKT residuals ~1e-8 on a unit-scaled Gramian). The bound applies to ``w``, the
    weights on the *normalised* rows. With the bound the non-negative inner product is lost.

    Scale: the reported weights on the original rows are ``v_i = (w_i / s_i) / sum_j (w_j / s_j)``,
    a convex combination, so ``K`` identical rows give that row (for ``normalization: none`` this is
    ``w`` itself). For ``l2``, the paper's direction ``sum_i w_i g_i / ||g_i||`` is rescaled by
    ``1 / sum_j (w_j / ||g_j||)``: a positive factor, same direction.
    """

    name: ClassVar[str] = "mgda"
    normalization: Normalization = "none"
    max_deviation: float | None = None
    deviation_center: Literal["uniform", "num_examples"] = "uniform"

    def __post_init__(self) -> None:
        if self.max_deviation is not None and self.max_deviation < 0:
            raise ValueError(f"max_deviation must be >= 0, got {self.max_deviation}")

    def weights_from_gramian(self, gram: torch.Tensor, inputs: AggregationInput) -> torch.Tensor:
        array = to_numpy(gram)
        scales = row_scales(array, inputs, self.normalization)
        w = self.simplex_weights(array / np.outer(scales, scales), inputs)
        on_rows = w / scales
        return to_weights(on_rows / on_rows.sum(), gram)

    def simplex_weights(self, normalised_gram: np.ndarray, inputs: AggregationInput) -> np.ndarray:
        """``w`` on the simplex (and in the FedMGDA+ box when ``max_deviation`` is set)."""
        if self.max_deviation is None:
            return min_norm_simplex(normalised_gram)
        lower, upper = deviation_box(self.center(inputs), self.max_deviation)
        return min_norm_simplex_box(normalised_gram, lower, upper)

    def center(self, inputs: AggregationInput) -> np.ndarray:
        k = inputs.num_rows
        if self.deviation_center == "uniform":
            return np.full(k, 1.0 / k)
        counts = inputs.num_examples.detach().to("cpu", torch.float64).numpy()
        return counts / counts.sum()
