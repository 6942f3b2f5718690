"""The Gramian ``G G^T`` of the rows and the row combination ``w @ G``: the two passes over the
``[K, P]`` matrix that every Gramian-based aggregator makes.

``float32`` (the default): one matrix product in the rows' precision (at least float32), the
``K x K`` result then cast to float64 for the solvers. One GEMM runs at BLAS speed; its error is
about 1e-6 of ``|g_i| |g_j|`` per entry (measured at K = 50, P = 1e6). The solvers turn an error
``e`` in the Gramian into an error of about ``e / lambda_min`` in the weights, where
``lambda_min`` is the smallest eigenvalue of the rows' correlation matrix (the Gramian scaled to
unit diagonal). So when the rows are nearly linearly dependent (``lambda_min`` below
:data:`FLOAT32_MIN_EIGENVALUE`: nearly parallel or anti-parallel rows, more rows than dimensions)
the Gramian is recomputed in float64, and results match the exact path there (tested on nearly
parallel, anti-parallel and badly scaled rows). ``float64``: always accumulated in float64 over
column chunks (exact to float64 rounding, several times slower on CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

GramianPrecision = Literal["float32", "float64"]
DEFAULT_CHUNK = 1 << 20
# Below this smallest eigenvalue of the correlation matrix, a float32 Gramian's ~1e-6 relative error
# could move the solvers' weights by more than ~2e-5 (float32's own tolerance in the aggregation
# tests): the Gramian is then recomputed in float64.
FLOAT32_MIN_EIGENVALUE = 0.05


def gramian(matrix: torch.Tensor, precision: GramianPrecision = "float32", chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """``matrix @ matrix.T`` as a float64 ``K x K`` tensor (see the module docstring for ``precision``)."""
    if precision == "float32" or matrix.dtype == torch.float64:
        rows = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()
        with full_float32_matmul():
            gram = (rows @ rows.T).to(torch.float64)
        if matrix.dtype == torch.float64 or smallest_correlation_eigenvalue(gram) >= FLOAT32_MIN_EIGENVALUE:
            return gram
    return exact_gramian(matrix, chunk)


@contextlib.contextmanager
def full_float32_matmul() -> Iterator[None]:
    """No TF32 inside the block: TF32 products (``torch.set_float32_matmul_precision("high")`` or
    ``allow_tf32``, which users turn on for training speed) err by about 1e-3, far beyond what the
    solvers tolerate. Restores the user's settings afterwards."""
    precision, allow_tf32 = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def smallest_correlation_eigenvalue(gram: torch.Tensor) -> float:
    """``lambda_min`` of the Gramian scaled to unit diagonal, over the non-zero rows (a zero row is exact in any precision)."""
    diagonal = gram.diagonal()
    nonzero = diagonal > 0
    if int(nonzero.sum()) < 2:
        return 1.0
    scale = diagonal[nonzero].rsqrt()
    correlation = gram[nonzero][:, nonzero] * scale[:, None] * scale[None, :]
    return float(torch.linalg.eigvalsh(correlation.cpu()).min())


def exact_gramian(matrix: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """``matrix @ matrix.T`` accumulated in float64 over column chunks of at most ``chunk`` parameters."""
    k, p = matrix.shape
    gram = torch.zeros(k, k, dtype=torch.float64, device=matrix.device)
    for start in range(0, p, chunk):
        block = matrix[:, start : start + chunk].to(torch.float64)
        gram += block @ block.T
    return gram


def combine_rows(weights: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``weights @ matrix`` (``[K] x [K, P] -> [P]``), on the matrix's device and dtype: one pass.

    Weights may come from CPU-side metadata (``num_examples``) while the rows sit on an accelerator.
    """
    return weights.to(device=matrix.device, dtype=matrix.dtype) @ matrix


def cosine_matrix(gram: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise cosines from a Gramian."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram / (norms[:, None] * norms[None, :]).clamp_min(eps)
