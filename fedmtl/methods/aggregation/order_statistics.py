"""Per-coordinate order statistics of a ``[K, P]`` matrix, the core of the median and the trimmed mean.

Each column chunk is transposed to ``[chunk, K]`` (contiguous) so that the selection runs along the
last, contiguous dimension, and only the needed ranks are selected (``torch.topk``) instead of
sorting all K values: on the 2-core CPU at K = 50, P = 1e6 this is 3.3x faster than sorting along
dimension 0 (`benchmarks/aggregation.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CHUNK = 2**16
"""Columns per pass: the transposed copy and the selection buffers stay ``O(K chunk)``."""


def map_column_chunks(matrix: torch.Tensor, per_chunk: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``per_chunk`` applied to every ``[chunk, K]`` transposed column chunk; the ``[P]`` results joined."""
    out = torch.empty(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    for start in range(0, matrix.shape[1], CHUNK):
        out[start : start + CHUNK] = per_chunk(matrix[:, start : start + CHUNK].T.contiguous())
    return out


def column_median(matrix: torch.Tensor) -> torch.Tensor:
    """The median of every column (the mean of the two middle values when K is even)."""
    k = matrix.shape[0]
    lower, upper = (k - 1) // 2, k // 2  # the same rank when K is odd

    def median(columns: torch.Tensor) -> torch.Tensor:
        smallest = columns.topk(upper + 1, dim=1, largest=False, sorted=True).values
        return (smallest[:, lower] + smallest[:, upper]) / 2

    return map_column_chunks(matrix, median)


def column_trimmed_mean(matrix: torch.Tensor, trim: int) -> torch.Tensor:
    """The mean of every column without its ``trim`` largest and ``trim`` smallest values."""
    k = matrix.shape[0]
    if not 0 <= 2 * trim < k:
        raise ValueError(f"cannot trim {trim} values off each end of {k}")

    def trimmed(columns: torch.Tensor) -> torch.Tensor:
        total = columns.sum(dim=1)
        if trim:
            total = total - columns.topk(trim, dim=1).values.sum(dim=1)
            total = total - columns.topk(trim, dim=1, largest=False).values.sum(dim=1)
        return total / (k - 2 * trim)

    return map_column_chunks(matrix, trimmed)
