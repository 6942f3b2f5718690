"""Shared seeded inputs for the aggregation tests (float64 and float32).

Each :class:`Case` holds a matrix with its ``num_examples`` and (distinct, positive) ``losses``;
:meth:`Case.inputs` builds a fresh :class:`AggregationInput` with a freshly seeded generator, so
results never depend on which test ran first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedmtl.methods.aggregation import AggregationInput

DTYPES = (torch.float64, torch.float32)
ROW_COUNTS = (1, 2, 3, 5, 10)
WIDTHS = (1, 7, 100)


@dataclass(frozen=True)
class Case:
    id: str
    matrix: torch.Tensor
    num_examples: torch.Tensor
    losses: torch.Tensor
    seed: int

    @property
    def num_rows(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def width(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def full_rank(self) -> bool:
        """Rows linearly independent: then every method's weights are unique."""
        return bool(torch.linalg.matrix_rank(self.matrix.double()) == self.num_rows)

    def inputs(self, *, generator: bool = True, permutation: torch.Tensor | None = None) -> AggregationInput:
        order = torch.arange(self.num_rows) if permutation is None else permutation
        return AggregationInput(
            matrix=self.matrix[order],
            num_examples=self.num_examples[order],
            losses=self.losses[order],
            generator=torch.Generator().manual_seed(self.seed) if generator else None,
        )


def make_case(kind: str, matrix: torch.Tensor, seed: int) -> Case:
    generator = torch.Generator().manual_seed(seed + 1)
    k, p = matrix.shape
    num_examples = torch.randint(1, 100, (k,), generator=generator).to(torch.float64)
    losses = 0.1 + torch.rand(k, generator=generator, dtype=torch.float64)
    return Case(f"{kind}-K{k}-P{p}-{str(matrix.dtype).removeprefix('torch.')}", matrix, num_examples, losses, seed)


def random_rows(k: int, p: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian rows with log-normal norms (spread over about two orders of magnitude)."""
    rows = torch.randn(k, p, generator=generator, dtype=torch.float64)
    return rows * torch.exp(torch.randn(k, 1, generator=generator, dtype=torch.float64))


def identical_rows(k: int, p: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(1, p, generator=generator, dtype=torch.float64).expand(k, p).clone()


def non_conflicting_rows(k: int, p: int, generator: torch.Generator) -> torch.Tensor:
    """A shared component plus small noise, with varied norms: every pairwise dot product > 0."""
    common = torch.randn(1, p, generator=generator, dtype=torch.float64)
    rows = common + 0.3 * common.norm() / p**0.5 * torch.randn(k, p, generator=generator, dtype=torch.float64)
    rows = rows * (0.5 + torch.rand(k, 1, generator=generator, dtype=torch.float64))
    gram = rows @ rows.T
    assert bool((gram > 0).all()), "non-conflicting rows must have positive pairwise dots"
    return rows


def conflicting_rows(k: int, p: int, generator: torch.Generator) -> torch.Tensor:
    """Centred simplex vertices in a random orthonormal frame (pairwise cosine about -1/(K-1)),
    with varied norms and a small shared component so that the mean is not exactly zero."""
    assert p >= k >= 2
    basis, _ = torch.linalg.qr(torch.randn(p, k, generator=generator, dtype=torch.float64))
    vertices = torch.eye(k, dtype=torch.float64) - 1.0 / k
    rows = vertices @ basis.T
    shared = torch.randn(1, p, generator=generator, dtype=torch.float64)
    rows = rows + 0.02 * rows.norm(dim=1).mean() * shared / shared.norm()
    rows = rows * (0.5 + torch.rand(k, 1, generator=generator, dtype=torch.float64))
    gram = rows @ rows.T
    assert bool((gram[~torch.eye(k, dtype=torch.bool)] < 0).all()), "conflicting rows must have negative dots"
    return rows


def with_zero_row(k: int, p: int, generator: torch.Generator) -> torch.Tensor:
    rows = random_rows(k, p, generator)
    rows[0] = 0.0
    return rows


RowFactory = Callable[[int, int, torch.Generator], torch.Tensor]


def build(
    kind: str, factory: RowFactory, shapes: list[tuple[int, int]], dtypes: tuple[torch.dtype, ...] = DTYPES
) -> list[Case]:
    cases = []
    for (k, p), dtype in itertools.product(shapes, dtypes):
        seed = 7919 * len(kind) + 101 * k + p
        matrix = factory(k, p, torch.Generator().manual_seed(seed)).to(dtype)
        cases.append(make_case(kind, matrix, seed))
    return cases


RANDOM = build("random", random_rows, list(itertools.product(ROW_COUNTS, WIDTHS)))
IDENTICAL = build("identical", identical_rows, [(2, 7), (5, 100), (10, 1)])
NON_CONFLICTING = build("nonconflicting", non_conflicting_rows, [(2, 7), (3, 100), (5, 7), (10, 100)])
CONFLICTING = build("conflicting", conflicting_rows, [(2, 7), (3, 7), (5, 100), (10, 100)])
ZERO_ROW = build("zerorow", with_zero_row, [(3, 7), (5, 100)])
ALL = RANDOM + IDENTICAL + NON_CONFLICTING + CONFLICTING + ZERO_ROW


def relative_tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 2e-5


def for_each_case(cases: list[Case], check: Callable[[Case], None]) -> None:
    """Run ``check`` on every case (one test per method keeps the suite fast); report all failing cases."""
    failures = []
    for case in cases:
        try:
            check(case)
        except AssertionError as err:
            failures.append(f"{case.id}: {err}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
