"""FedFV, "Federated Learning with Fair Averaging" (Wang et al., IJCAI 2021): server-side projection."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.methods.aggregation.base import AggregationInput, GramianAggregator
from fedmtl.methods.aggregation.pcgrad import orders_skipping_self, project_conflicts


def kept_clients(ascending: torch.Tensor, alpha: float) -> torch.Tensor:
    """The ``alpha`` share of clients with the largest losses, exactly as the official code counts them.

    ``order[ceil((K - 1) * (1 - alpha)):]``: with ``K = 10`` and ``alpha = 0.1`` one client is kept.
    """
    if alpha <= 0:
        return ascending[:0]
    return ascending[math.ceil((ascending.shape[0] - 1) * (1 - alpha)) :]


# The norm of a combination is read off the Gramian as sqrt(w^T G G^T w), which resolves it only to
# about sqrt(machine eps) of the terms' scale sum_i |w_i| ||g_i||; below this fraction it is noise.
VANISHING_NORM = 1e-6


def mean_norm_factor(gram: torch.Tensor, weights: torch.Tensor) -> float:
    """``||mean_i g_i|| / ||weights @ G||``, or 0 when the projected mean vanishes.

    "Vanishes" means below ``1e-6`` of ``sum_i |w_i| ||g_i||`` (e.g. collinear conflicting rows, whose
    projections cancel exactly): the official code would rescale rounding noise, of arbitrary sign,
    to the norm of the mean (or divide by zero).
    """
    k = gram.shape[0]
    uniform = torch.full((k,), 1.0 / k, dtype=gram.dtype, device=gram.device)
    target = float((uniform @ gram @ uniform).clamp_min(0).sqrt())
    current = float((weights @ gram @ weights).clamp_min(0).sqrt())
    terms = float(weights.abs() @ gram.diagonal().clamp_min(0).sqrt())
    return target / current if current > VANISHING_NORM * terms else 0.0


@dataclass(frozen=True)
class FedFV(GramianAggregator):
    """FedFV (Wang, Xu, Wang, Zhang; IJCAI 2021), internal conflicts only (``tau = 0``).

    Variant implemented, following the official code (easyFL ``algorithm/fedfv.py``):

    1. Sort clients by loss, ascending (stable, ties by row index).
    2. The ``alpha`` share of clients with the largest losses keep their update unprojected
       (``order[ceil((K - 1) * (1 - alpha)):]``; none when ``alpha = 0``).
    3. Every other client ``i`` projects ``g_i'`` against each other client ``j`` in ascending-loss
       order, when ``g_i' . g_j < 0``, onto the normal plane of the *original* ``g_j``. Higher-loss
       clients come last, so their conflicts are resolved last and take priority.
    4. Take the plain (unweighted, as in the official code) mean of the projected rows and rescale
       it to the norm of the plain mean of the original rows. When the projected mean vanishes
       (below ``1e-6`` of ``sum_i |w_i| ||g_i||``, e.g. collinear conflicting rows) the result is
       zero, where the official code would rescale rounding noise or divide by zero.

    The second stage of the paper (projecting against the sum of the last ``tau`` rounds' conflicting
    updates) needs server history; this aggregator is stateless, so only ``tau = 0`` is accepted.
    The result is mean-scaled: ``K`` identical rows give that row. ``inputs.losses`` (the clients'
    training losses) are required. Exact up to rounding.
    """

    name: ClassVar[str] = "fedfv"
    alpha: float = 0.0
    tau: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")
        if self.tau > 0:
            raise ValueError(f"tau>0 (history) not supported: this aggregator is stateless, got tau={self.tau}")

    def weights_from_gramian(self, gram: torch.Tensor, inputs: AggregationInput) -> torch.Tensor:
        if inputs.losses is None:
            raise ValueError("fedfv needs client losses")
        gram64 = gram.detach().to("cpu", torch.float64)
        k = gram64.shape[0]
        ascending = torch.sort(inputs.losses.detach().cpu(), stable=True).indices
        rank = torch.empty(k, dtype=torch.float64)
        rank[ascending] = torch.arange(k, dtype=torch.float64)
        frozen = torch.zeros(k, dtype=torch.bool)
        frozen[kept_clients(ascending, self.alpha)] = True
        coefficients = project_conflicts(gram64, orders_skipping_self(rank.expand(k, k)), frozen)
        weights = coefficients.mean(dim=0)
        return (weights * mean_norm_factor(gram64, weights)).to(gram.device)
