"""The aggregation interface shared by the server (rows = client updates) and clients (rows = task gradients).

Conventions (see README, "Aggregation conventions"):

* Input ``matrix`` is ``[K, P]``; every row points in a *gradient* direction (a client's
  pseudo-gradient ``global - local``, or a task gradient).
* Output ``direction`` is **mean-scaled**: when all K rows equal ``g`` the result is ``g``.
  A server (or client) optimizer then steps along ``-direction``; swapping the aggregator
  therefore never silently changes the effective step size by a factor K or ``1 + c``.
* ``weights`` (``[K]``) are reported whenever the direction is a linear combination of the rows
  (``direction = weights @ matrix``), for diagnostics. Methods that are not linear in the rows
  return ``None``.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.core.registry import Component, Registry
from fedmtl.methods.aggregation.gramian import GramianPrecision, combine_rows, gramian


@dataclass(frozen=True)
class AggregationInput:
    """What an aggregator may look at.

    ``matrix``: ``[K, P]`` rows in gradient direction.
    ``num_examples``: ``[K]`` positive sample counts (all ones for task gradients).
    ``losses``: optional ``[K]`` training losses (FedFV orders clients by loss).
    ``generator``: source of declared randomness (PCGrad's shuffle); seeded by the caller.
    ``gramian_precision``: how Gramian-based methods build ``G G^T`` (``fedmtl.methods.aggregation.gramian``).
    ``products``: the rows' ``K x K`` products made already while they arrived (a server's
    :class:`~fedmtl.methods.aggregation.gramian_stream.GramianStream`), which Gramian-based methods check
    and use instead of a first product of their own.
    """

    matrix: torch.Tensor
    num_examples: torch.Tensor
    losses: torch.Tensor | None = None
    generator: torch.Generator | None = None
    gramian_precision: GramianPrecision = "float32"
    products: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2 or self.matrix.shape[0] == 0:
            raise ValueError(f"matrix must be [K, P] with K >= 1, got shape {tuple(self.matrix.shape)}")
        k = self.matrix.shape[0]
        if self.num_examples.shape != (k,):
            raise ValueError(f"num_examples must have shape ({k},), got {tuple(self.num_examples.shape)}")
        if self.losses is not None and self.losses.shape != (k,):
            raise ValueError(f"losses must have shape ({k},), got {tuple(self.losses.shape)}")
        if self.products is not None and self.products.shape != (k, k):
            raise ValueError(f"products must have shape ({k}, {k}), got {tuple(self.products.shape)}")

    @property
    def num_rows(self) -> int:
        return int(self.matrix.shape[0])


@dataclass(frozen=True)
class AggregationResult:
    """``direction`` ``[P]`` (mean-scaled) and, when linear in the rows, ``weights`` ``[K]``;
    ``gramian`` (float64 ``K x K``) when the method built one, so that diagnostics need no second pass."""

    direction: torch.Tensor
    weights: torch.Tensor | None = None
    gramian: torch.Tensor | None = None


def finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


class NonFiniteAggregate(ValueError):
    """The rows hold NaN or infinite entries, or their aggregate overflowed.

    Checked on the ``[P]`` aggregate, which costs nothing next to the aggregation: a direction
    ``weights @ matrix`` is non-finite wherever any row is (IEEE ``0 x NaN = NaN``), whatever its
    weight; methods that are not linear in the rows (``weights`` None, e.g. the median, which could
    step over a NaN) are also checked on the sum of the rows, one pass.
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        bad = (~torch.isfinite(matrix)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            message = f"rows {bad} of {matrix.shape[0]} hold NaN or infinite entries"
        else:
            norm = float(matrix.double().norm(dim=1).max())
            message = f"the aggregate of finite rows overflowed {matrix.dtype} (largest row norm {norm:.3g})"
        super().__init__(message)
        self.rows = bad


class Aggregator(Component):
    """Maps K row vectors to one mean-scaled direction.

    Subclasses are frozen dataclasses whose fields are the method's hyperparameters, so that
    the config layer can validate them and ``repr`` shows every setting. ``name`` is the key
    used in YAML (``server.aggregator: {name: cagrad, c: 0.4}``).
    """

    REGISTRY: ClassVar[Registry] = Registry("aggregator", ("fedmtl.methods.aggregation",))

    @abstractmethod
    def aggregate(self, inputs: AggregationInput) -> AggregationResult:
        """Combine the rows of ``inputs.matrix``."""

    def __call__(self, inputs: AggregationInput) -> AggregationResult:
        """:meth:`aggregate`, refusing non-finite input (a NaN or infinite entry, or an overflow) rather
        than returning an aggregate it has corrupted."""
        result = self.aggregate(inputs)
        if not finite(result.direction) or (result.weights is None and not finite(inputs.matrix.sum())):
            raise NonFiniteAggregate(inputs.matrix)
        return result

    def min_rows(self) -> int:
        """The fewest rows this method is defined for (checked against the config before a run starts)."""
        return 1

    @property
    def uniform_mean(self) -> bool:
        """The direction is the plain mean of the rows, so one client moves it by at most ``C / K`` when
        rows are clipped to ``C`` (what noise at the server is calibrated to)."""
        return False

    @property
    def mean_of_rows(self) -> bool:
        """The direction is a mean of the rows weighted by their example counts or by nothing, which the
        server can have from secure aggregation without seeing any row."""
        return False


class GramianAggregator(Aggregator):
    """An aggregator whose weights depend on the rows only through the Gramian ``G G^T``.

    The direction is then ``weights @ G``: one pass to build the ``K x K`` Gramian (chunked over
    parameters), a small solve on ``K x K``, and one more pass to combine, so memory beyond the
    K rows stays ``O(P + K^2)``.
    """

    @abstractmethod
    def weights_from_gramian(self, gramian: torch.Tensor, inputs: AggregationInput) -> torch.Tensor:
        """Return ``[K]`` mean-scaled weights from the ``K x K`` Gramian."""

    def aggregate(self, inputs: AggregationInput) -> AggregationResult:
        if inputs.num_rows == 1:  # one row is its own aggregate, whatever the method's solver makes of it
            weights = torch.ones(1, dtype=inputs.matrix.dtype, device=inputs.matrix.device)
            return AggregationResult(direction=inputs.matrix[0].clone(), weights=weights)
        gram = gramian(inputs.matrix, inputs.gramian_precision, products=inputs.products)
        if not finite(gram):  # before any solver sees it
            raise NonFiniteAggregate(inputs.matrix)
        weights = self.weights_from_gramian(gram, inputs).to(inputs.matrix.dtype)
        return AggregationResult(direction=combine_rows(weights, inputs.matrix), weights=weights, gramian=gram)
