"""The Gramian ``G G^T`` of the rows and the row combination ``w @ G``: the two passes over the
``[K, P]`` matrix that every Gramian-based aggregator makes.

``float32`` (the default): one matrix product in the rows' precision (at least float32), the
``K x K`` result then cast to float64 for the solvers. One GEMM runs at BLAS speed; its error is
about 1e-6 of ``|g_i| |g_j|`` per entry (measured at K = 50, P = 1e6). The solvers turn an error
``e`` in the Gramian into an error of about ``e / lambda_min`` in the weights, where
``lambda_min`` is the smallest eigenvalue of the rows' correlation matrix (the Gramian scaled to
unit diagonal). So when the rows are nearly linearly dependent (``lambda_min`` below
:data:`FLOAT32_MIN_EIGENVALUE`), two more steps follow:

* Rows that share a large common component (clients that mostly agree, pairwise cosines up to
  about 0.99): the Gramian is recomputed *centred*, ``G = D D^T + a 1^T + 1 a^T + |m|^2 1 1^T``
  with ``m`` the mean row, ``D`` the rows minus ``m`` and ``a = D m``, all float32 products over
  column chunks except ``|m|^2`` (float64). Its error scales with ``|d_i| |d_j|`` and
  ``|d| |m|`` instead of ``|m|^2``, so it resolves the small differences the solvers act on.
  Used when the smallest eigenvalue of ``G`` is at least :data:`FLOAT32_MIN_EIGENVALUE` times
  that error scale ``max |d_i|^2 + 2 max |d_i| |m|`` (the same margin as above, where the scale
  is ``|g_i| |g_j|``).
* Otherwise (nearly identical or anti-parallel rows, more rows than dimensions) the exact float64
  accumulation.

Results match the exact path within float32 tolerance on every path (tested on nearly parallel,
similar, anti-parallel and badly scaled rows). ``float64``: always the exact accumulation over
column chunks (exact to float64 rounding, several times slower on CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

GramianPrecision = Literal["float32", "float64"]
# Columns per chunk of the chunked passes: on a CPU the [K, chunk] buffers stay in cache (2^14 was
# fastest at K = 50 on the 2-core machine, 2x faster than 2^20); on a GPU fewer, larger kernels.
CPU_CHUNK, GPU_CHUNK = 1 << 14, 1 << 22


def default_chunk(device: torch.device) -> int:
    return CPU_CHUNK if device.type == "cpu" else GPU_CHUNK


# Below this smallest eigenvalue of the correlation matrix, a float32 Gramian's ~1e-6 relative error
# could move the solvers' weights by more than ~2e-5 (float32's own tolerance in the aggregation
# tests): the Gramian is then recomputed in float64.
FLOAT32_MIN_EIGENVALUE = 0.05


def gramian(
    matrix: torch.Tensor,
    precision: GramianPrecision = "float32",
    chunk: int | None = None,
    products: torch.Tensor | None = None,
) -> torch.Tensor:
    """``matrix @ matrix.T`` as a float64 ``K x K`` tensor (see the module docstring for ``precision``).

    ``products``: the rows' products made already, in ``precision`` (a
    :class:`~fedmtl.methods.aggregation.gramian_stream.GramianStream`'s, built while the rows arrived):
    used instead of the first product, and checked as it would be."""
    chunk = chunk or default_chunk(matrix.device)
    if matrix.dtype == torch.float64 or precision == "float64":
        if products is not None:
            return products
        return matrix @ matrix.T if matrix.dtype == torch.float64 else exact_gramian(matrix, chunk)
    rows = matrix if matrix.dtype == torch.float32 else matrix.float()
    if products is not None:
        gram = products
    else:
        with full_float32_matmul():
            gram = (rows @ rows.T).to(torch.float64)
    if not bool(torch.isfinite(gram).all()):  # float32 overflow (or non-finite rows, which stay so)
        return exact_gramian(matrix, chunk)
    if smallest_correlation_eigenvalue(gram) >= FLOAT32_MIN_EIGENVALUE:
        return gram
    centred, error_scale = centred_gramian(rows, chunk)
    if smallest_eigenvalue(centred) >= FLOAT32_MIN_EIGENVALUE * error_scale:
        return centred
    return exact_gramian(matrix, chunk)


def centred_gramian(rows: torch.Tensor, chunk: int = CPU_CHUNK) -> tuple[torch.Tensor, float]:
    """``rows @ rows.T`` from the rows' mean ``m`` and deviations ``D`` (see the module docstring),
    float32 products over column chunks of at most ``chunk`` parameters (one ``[K, chunk]`` buffer);
    and the scale of its rounding error, ``max |d_i|^2 + 2 max |d_i| |m|``."""
    k, p = rows.shape
    mean = rows.mean(dim=0)
    deviations = torch.zeros(k, k, dtype=torch.float64, device=rows.device)
    cross = torch.zeros(k, dtype=torch.float64, device=rows.device)
    with full_float32_matmul():
        for start in range(0, p, chunk):
            block = rows[:, start : start + chunk] - mean[start : start + chunk]
            deviations += block @ block.T  # float32 products, summed in the float64 accumulators
            cross += block @ mean[start : start + chunk]
    mean64 = mean.to(torch.float64)
    mean_norm_sq = mean64 @ mean64
    largest_deviation_sq = float(deviations.diagonal().max().clamp_min(0))
    error_scale = largest_deviation_sq + 2 * (largest_deviation_sq * float(mean_norm_sq)) ** 0.5
    return deviations + cross[:, None] + cross[None, :] + mean_norm_sq, error_scale


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
    return smallest_eigenvalue(correlation)


def smallest_eigenvalue(symmetric: torch.Tensor) -> float:
    """The smallest eigenvalue of a small symmetric matrix, by NumPy's LAPACK on the CPU: torch's
    ``eigvalsh`` on two OpenMP threads took 3 s instead of 8 ms at K = 300 while another process kept
    both cores busy (numpy 9 ms; on an idle machine both about 5 ms)."""
    return float(np.linalg.eigvalsh(symmetric.detach().cpu().to(torch.float64).numpy()).min())


def exact_gramian(matrix: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``matrix @ matrix.T`` accumulated in float64 over column chunks of at most ``chunk`` parameters."""
    k, p = matrix.shape
    chunk = chunk or default_chunk(matrix.device)
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
