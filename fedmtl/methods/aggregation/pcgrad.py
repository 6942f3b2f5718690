"""PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020), on the Gramian."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.methods.aggregation.base import AggregationInput, GramianAggregator
from fedmtl.methods.aggregation.native_projection import project_conflicts_native


def project_conflicts(
    gram: torch.Tensor, orders: torch.Tensor, frozen: torch.Tensor | None = None, *, native: bool = True
) -> torch.Tensor:
    """Sequential conflict projection, tracked as coefficients on the original rows.

    Row ``i`` of the result is ``c_i`` with ``g_i' = c_i @ G``. Starting from ``c_i = e_i``, for each
    ``j`` in ``orders[i]`` (the other rows, ``[K, K-1]``): if ``g_i' . g_j < 0`` then
    ``g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j``, always against the *original* ``g_j``. Dot
    products come from the Gramian: ``g_i' . g_j = c_i @ gram[:, j]``. All rows advance one position
    of their order per step, so the loop has ``K - 1`` vectorised steps. Rows flagged in ``frozen``
    are left unprojected; zero rows are never projection targets.

    Every current dot product ``g_i' . g_j`` is kept (``coefficients @ gram``, ``[K, K]``) and only the
    rows that project at a step are updated (``- shrink_i * gram[j]``): a step costs ``K`` numbers per
    projecting row, not ``K^2`` (K = 1,000 Gaussian rows, about half projecting per step: 0.4-0.45 s;
    rows that rarely conflict: tens of ms). With ``native`` (the default), a float64 Gramian on the CPU runs
    each row's whole order in native code instead (:mod:`.native_projection`; same bits, 56 ms at K = 1,000),
    where a C++ compiler is present.
    """
    k = gram.shape[0]
    movable = torch.ones(k, dtype=torch.bool, device=gram.device) if frozen is None else ~frozen
    if native:
        projected = project_conflicts_native(gram, orders, movable)
        if projected is not None:
            return projected
    coefficients = torch.eye(k, dtype=gram.dtype, device=gram.device)
    dots = gram.clone()  # dots[i, j] = g_i' . g_j for the current g_i' = coefficients[i] @ G
    # per step s (rows of these [K-1, K] tables): each row's target, where its dot sits in the flattened
    # tables, the target's squared norm, and whether the row may project onto it at all
    targets = orders.T.contiguous()
    flat = (torch.arange(k, device=gram.device) * k + targets).contiguous()
    norms = gram.diagonal()[targets]
    usable = (norms > 0) & movable
    flat_dots, flat_coefficients = dots.view(-1), coefficients.view(-1)
    for step in range(k - 1):
        current = flat_dots.take(flat[step])
        projecting = torch.nonzero((current < 0) & usable[step]).flatten()
        if projecting.numel() == 0:
            continue
        shrink = current.index_select(0, projecting).div_(norms[step].index_select(0, projecting)).neg_()
        flat_coefficients.index_add_(0, flat[step].index_select(0, projecting), shrink)
        update = gram.index_select(0, targets[step].index_select(0, projecting))  # scaled in place, added in one pass
        dots.index_add_(0, projecting, update.mul_(shrink[:, None]))
    return coefficients


def orders_skipping_self(keys: torch.Tensor) -> torch.Tensor:
    """``[K, K-1]``: for row ``i``, the other rows sorted by ``keys[i]`` (ascending)."""
    k = keys.shape[0]
    keys = keys.clone()
    keys.fill_diagonal_(float("inf"))
    return keys.argsort(dim=1, stable=True)[:, : k - 1]


def pcgrad_orders(k: int, generator: torch.Generator | None) -> torch.Tensor:
    """A fresh uniformly random order of the other rows for every row, or ``0..K-1`` without a generator."""
    if generator is None:
        keys = torch.arange(k, dtype=torch.float64).expand(k, k)
    else:
        keys = torch.rand(k, k, generator=generator, dtype=torch.float64, device=generator.device).cpu()
    return orders_skipping_self(keys)


@dataclass(frozen=True)
class PCGrad(GramianAggregator):
    """PCGrad (Yu, Kumar, Gupta, Levine, Hausman, Finn; NeurIPS 2020), mean-reduced.

    Variant implemented: for each row ``i``, start from ``g_i`` and visit the *other* rows ``j`` in
    a random order drawn from ``inputs.generator`` (a fresh permutation per ``i``; without a
    generator the fixed order ``0..K-1`` skipping ``i``); when ``g_i' . g_j < 0`` subtract the
    projection of ``g_i'`` onto the *original* ``g_j``. The official code also visits ``j = i``;
    this follows the paper's "other tasks" rule. The result is the **mean** of the projected rows
    (the paper sums them), so ``K`` identical rows give that row. Run on the Gramian: ``weights``
    are the mean of the coefficient vectors, exact up to rounding.

    The guarantee of the paper holds for two rows: the result then has a non-negative inner
    product with both. With three or more rows a later projection can re-create a conflict.
    """

    name: ClassVar[str] = "pcgrad"

    def weights_from_gramian(self, gram: torch.Tensor, inputs: AggregationInput) -> torch.Tensor:
        gram64 = gram.detach().to("cpu", torch.float64)
        orders = pcgrad_orders(gram64.shape[0], inputs.generator)
        return project_conflicts(gram64, orders).mean(dim=0).to(gram.device)
