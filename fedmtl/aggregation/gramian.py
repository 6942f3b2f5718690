"""Chunked Gramian and row combination, so that large P never needs a second [K, P] buffer."""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 1 << 20


def gramian(matrix: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """``matrix @ matrix.T`` accumulated over column chunks of at most ``chunk`` parameters.

    Accumulates in float64 for float32 inputs: the Gramian feeds small solvers that are
    sensitive to rounding when rows are nearly parallel.
    """
    k, p = matrix.shape
    acc_dtype = torch.float64 if matrix.dtype in (torch.float32, torch.float16, torch.bfloat16) else matrix.dtype
    gram = torch.zeros(k, k, dtype=acc_dtype, device=matrix.device)
    for start in range(0, p, chunk):
        block = matrix[:, start : start + chunk].to(acc_dtype)
        gram += block @ block.T
    return gram


def combine_rows(weights: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``weights @ matrix`` (``[K] x [K, P] -> [P]``), on the matrix's device and dtype.

    Weights may come from CPU-side metadata (``num_examples``) while the rows sit on an accelerator.
    """
    return weights.to(device=matrix.device, dtype=matrix.dtype) @ matrix


def cosine_matrix(gram: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise cosines from a Gramian."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram / (norms[:, None] * norms[None, :]).clamp_min(eps)
