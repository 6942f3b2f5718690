"""Krum and multi-Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017, "Machine Learning
with Adversaries: Byzantine Tolerant Gradient Descent"), on the Gramian, optionally followed by any
registered aggregator on the selected rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from fedmtl.methods.aggregation.base import (
    AggregationInput,
    AggregationResult,
    Aggregator,
    NonFiniteAggregate,
    finite,
)
from fedmtl.methods.aggregation.fedavg import FedAvg
from fedmtl.methods.aggregation.gramian import gramian

# Blanchard et al.'s multi-Krum: the plain mean of the selected rows.
SELECTED_MEAN = FedAvg(weighted=False)


def squared_distances(gram: torch.Tensor) -> torch.Tensor:
    """``||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij`` from the Gramian (clamped at 0 against rounding)."""
    norms = gram.diagonal()
    return (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(0)


def krum_scores(gram: torch.Tensor, f: int) -> torch.Tensor:
    """Blanchard et al.'s score: for each row ``i``, the sum of the squared distances to its
    ``K - f - 2`` nearest *other* rows."""
    k = gram.shape[0]
    distances = squared_distances(gram.detach().to("cpu", torch.float64))
    distances.fill_diagonal_(float("inf"))
    nearest = distances.sort(dim=1).values[:, : k - f - 2]
    return nearest.sum(dim=1)


def check_rows(rows: int, f: int, m: int) -> None:
    """Krum's assumption ``K > 2f + 2`` and ``m <= K``, checked per round: the number of replies varies."""
    if rows <= 2 * f + 2:
        raise ValueError(
            f"krum with f={f} needs more than 2f + 2 = {2 * f + 2} rows (client updates), got {rows}: "
            "lower f or aggregate more clients per round"
        )
    if m > rows:
        raise ValueError(f"krum selects m={m} rows but got only {rows}")


@dataclass(frozen=True)
class Krum(Aggregator):
    """Krum / multi-Krum (Blanchard et al., NeurIPS 2017), Byzantine-robust selection.

    Rule, with ``K`` rows of which at most ``f`` are assumed Byzantine (requires ``K > 2f + 2``,
    checked at every aggregation, since the number of replies varies; fewer rows raise
    ``ValueError`` rather than silently aggregating without the guarantee):

    1. score each row ``i``: ``s(i) = sum ||g_i - g_j||^2`` over the ``K - f - 2`` rows ``j != i``
       nearest to ``g_i`` (squared Euclidean distances, read off the Gramian:
       ``||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij``; :func:`fedmtl.methods.aggregation.gramian.gramian`
       recomputes it centred or in float64 when the rows nearly coincide, so small distances between
       similar honest updates are resolved);
    2. select the ``m`` rows with the smallest scores (ties go to the lower row index);
    3. combine the selected rows with ``then``, any registered aggregator. The default,
       ``{name: fedavg, weighted: false}``, is the paper's rule: ``m = 1`` (Krum) returns the
       selected row, ``m > 1`` (multi-Krum) the plain mean of the selected rows.

    ``then`` composes a robust selection with a conflict-aware combination: for example
    ``{name: krum, f: 2, m: 5, then: {name: upgrad}}`` first discards the rows Krum finds far from
    the others, then resolves conflicts among the ``m`` that remain. The inner aggregator receives the
    selected rows in row order with their ``num_examples``, losses, generator and Gramian precision.
    Setting ``then`` to another aggregator with ``m = 1`` is rejected (one row: nothing to combine).

    Example counts: the selection ignores ``num_examples`` (they are self-reported; the paper gives
    every reply one vote), and so does the default mean. An inner aggregator that weights by
    examples (``then: {name: fedavg}``) weights the *selected* rows by their counts.

    torchjd 0.18.0 also has ``Krum``, but it scores with unsquared distances and breaks ties
    arbitrarily (``topk``), so this is written in plain torch to match the paper's rule.

    ``weights`` are reported whenever the result is a linear combination of the rows: the inner
    aggregator's weights scattered onto the selected rows (``1/m`` each by default; ``None`` when the
    inner one is not linear, e.g. ``median``). Mean-scaled when ``then`` is (every registered
    aggregator is): K identical rows give that row.
    """

    name: ClassVar[str] = "krum"
    f: int = 1  # Byzantine clients assumed; every round needs more than 2f + 2 updates
    m: int = 1  # updates kept (lowest scores): 1 is Krum, more is multi-Krum
    then: Aggregator = field(default=SELECTED_MEAN)  # combines the kept updates; default: their plain mean

    def __post_init__(self) -> None:
        if self.f < 0:
            raise ValueError(f"f must be >= 0, got {self.f}")
        if self.m < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")
        if self.m == 1 and self.then != SELECTED_MEAN:
            raise ValueError(f"then={self.then!r} would combine a single selected row: set m >= 2")

    def min_rows(self) -> int:
        return max(2 * self.f + 3, self.m)

    def aggregate(self, inputs: AggregationInput) -> AggregationResult:
        k = inputs.num_rows
        check_rows(k, self.f, self.m)
        gram = gramian(inputs.matrix, inputs.gramian_precision, products=inputs.products)
        if not finite(gram):  # the scores would rank a NaN row arbitrarily
            raise NonFiniteAggregate(inputs.matrix)
        ranking = torch.sort(krum_scores(gram, self.f), stable=True).indices
        selected = ranking[: self.m].sort().values
        inner = self.then(select_rows(inputs, selected))
        weights = None
        if inner.weights is not None:
            weights = inner.weights.new_zeros(k)
            weights[selected.to(weights.device)] = inner.weights
        return AggregationResult(direction=inner.direction, weights=weights, gramian=gram)


def select_rows(inputs: AggregationInput, rows: torch.Tensor) -> AggregationInput:
    """The same input restricted to ``rows`` (a ``[m]`` index tensor, ascending)."""
    on = inputs.matrix.device
    return AggregationInput(
        matrix=inputs.matrix[rows.to(on)],
        num_examples=inputs.num_examples[rows.to(inputs.num_examples.device)],
        losses=None if inputs.losses is None else inputs.losses[rows.to(inputs.losses.device)],
        generator=inputs.generator,
        gramian_precision=inputs.gramian_precision,
    )
