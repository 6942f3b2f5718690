"""Per-coordinate order statistics of a ``[K, P]`` matrix, the core of the median and the trimmed mean.

A comparator network sorts all P columns at once: each comparator is an elementwise minimum and
maximum of two rows, so every column moves through the same steps at vector speed, with no per-column
branching. The network is Batcher's odd-even merge sort (K. E. Batcher, "Sorting networks and their
applications", AFIPS 1968; Knuth, TAOCP vol. 3, 5.3.4, algorithm M), cut to K wires and pruned to the
comparators the wanted ranks depend on: the median of 50 rows needs 330 of them. A mean of a range of
ranks (the median's middle pair, the trimmed mean's middle) needs only that range's wires to hold its
values, in any order, so the network is pruned either to that range or to the ranks outside it,
whichever is shorter, and the range's wires are summed where they lie.

On the CPU the network runs as native code (:mod:`.native_network`: wires in registers, each value read
once: 2.8-2.9x FedAvg's time for the median at K = 50, P = 1e6 on the 2-core CPU, against 12-15x with
the torch network; BENCHMARKS.md ``order_statistics`` and ``aggregation``); elsewhere, or without a
C++ compiler, with torch's elementwise minimum and maximum on chunks of columns copied contiguous.
Chunks are spread over torch's threads on the CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from fedmtl.methods.aggregation.native_network import Network, Outputs, compiled_network

CHUNK = 2**15
"""Columns per pass on the CPU: a chunk's K rows are copied (``O(K chunk)`` memory per thread)."""
ACCELERATOR_CHUNK = 2**20
"""Columns per pass on an accelerator: fewer, larger kernels, the copy still bounded (K = 50: 200 MB)."""


def batcher_network(rows: int) -> list[tuple[int, int]]:
    """Comparators ``(low wire, high wire)`` of Batcher's odd-even merge sort on ``rows`` wires, in order.

    Built for the next power of two and cut to ``rows`` wires: the missing wires stand for ``+inf``
    values, which start above every real one and never move, so their comparators do nothing."""
    wires = 1 << max(rows - 1, 0).bit_length()
    pairs = []
    merged = 1  # sorted runs of this length are merged into runs twice as long
    while merged < wires:
        gap = merged
        while gap >= 1:
            for start in range(gap % merged, wires - gap, 2 * gap):
                for i in range(min(gap, wires - start - gap)):
                    low, high = start + i, start + i + gap
                    if low // (2 * merged) == high // (2 * merged) and high < rows:
                        pairs.append((low, high))
            gap //= 2
        merged *= 2
    return pairs


@functools.lru_cache(maxsize=64)
def comparator_network(rows: int, ranks: tuple[int, ...]) -> Network:
    """The comparators after which wire ``r`` holds every column's ``r``-th smallest value (from 0),
    for each ``r`` in ``ranks``: Batcher's network without the comparators no wanted wire depends on."""
    needed, kept = set(ranks), []
    for low, high in reversed(batcher_network(rows)):
        if low in needed or high in needed:
            kept.append((low, high))
            needed |= {low, high}
    return tuple(reversed(kept))


def column_ranks(matrix: torch.Tensor, ranks: Sequence[int]) -> torch.Tensor:
    """``[len(ranks), P]``: row ``i`` holds every column's ``ranks[i]``-th smallest value (from 0)."""
    k = matrix.shape[0]
    if any(not 0 <= r < k for r in ranks):
        raise ValueError(f"ranks {list(ranks)} outside 0..{k - 1}")
    ranks = tuple(ranks)
    return run_network(matrix, comparator_network(k, ranks), tuple((rank,) for rank in ranks))


def column_rank_mean(matrix: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """``[P]``: the mean of every column's ``low``-th to ``(high - 1)``-th smallest values (from 0)."""
    k = matrix.shape[0]
    if not 0 <= low < high <= k:
        raise ValueError(f"ranks {low}..{high - 1} outside 0..{k - 1}")
    return run_network(matrix, rank_range_network(k, low, high), (tuple(range(low, high)),))[0]


def rank_range_network(rows: int, low: int, high: int) -> Network:
    """The comparators after which wires ``low`` to ``high - 1`` hold the ranks ``low`` to ``high - 1``, in
    some order: the network pruned to those ranks, or to the ranks outside them (once those are in place,
    the rest are the range's), whichever is shorter."""
    inside = tuple(range(low, high))
    outside = tuple(r for r in range(rows) if not low <= r < high)
    return min(comparator_network(rows, inside), comparator_network(rows, outside), key=len)


def run_network(matrix: torch.Tensor, network: Network, outputs: Outputs, native: bool = True) -> torch.Tensor:
    """``[len(outputs), P]``: ``network`` run on every column of ``matrix`` (left as it was), natively on the
    CPU when a kernel can be built and ``native`` allows it, else with torch (the same bits)."""
    k, p = matrix.shape
    out = torch.empty(len(outputs), p, dtype=matrix.dtype, device=matrix.device)
    starts, workers = chunking(matrix.device, p)
    chunk = starts.step
    kernel = compiled_network(k, network, outputs, matrix.dtype) if native and matrix.device.type == "cpu" else None
    if kernel is not None and matrix.stride(1) != 1:
        matrix = matrix.contiguous()  # the kernel reads each row's columns contiguous; rows may be strided

    def sort_chunk(start: int) -> None:
        stop = min(start + chunk, p)
        if kernel is not None:
            kernel(matrix, out, start, stop)
        else:
            out[:, start:stop] = torch_network(matrix[:, start:stop], network, outputs)

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(sort_chunk, starts))  # list(): a chunk's exception is raised here
    else:
        for start in starts:
            sort_chunk(start)
    return out


def torch_network(columns: torch.Tensor, network: Network, outputs: Outputs) -> torch.Tensor:
    """``network`` run on a copy of ``columns`` with torch, one elementwise minimum and maximum per
    comparator; then each output's mean, summed in the native kernel's order (so both give the same bits)."""
    wires = list(columns.clone(memory_format=torch.contiguous_format).unbind(0))  # the input is never written
    spare = torch.empty_like(wires[0])
    for low, high in network:
        torch.minimum(wires[low], wires[high], out=spare)
        torch.maximum(wires[low], wires[high], out=wires[high])
        wires[low], spare = spare, wires[low]
    means = []
    for group in outputs:
        total = wires[group[0]].clone()
        for wire in group[1:]:
            total += wires[wire]
        means.append(total / len(group) if len(group) > 1 else total)
    return torch.stack(means)


def chunking(device: torch.device, columns: int) -> tuple[range, int]:
    """The first column of every chunk, and how many threads sort the chunks: on the CPU chunks of
    :data:`CHUNK` spread over torch's threads, on an accelerator chunks of :data:`ACCELERATOR_CHUNK`
    one after another (each comparator already runs over the whole chunk in parallel there)."""
    if device.type == "cpu":
        starts = range(0, columns, CHUNK)
        return starts, min(torch.get_num_threads(), len(starts))
    return range(0, columns, ACCELERATOR_CHUNK), 1


def column_median(matrix: torch.Tensor) -> torch.Tensor:
    """The median of every column (the mean of the two middle values when K is even)."""
    k = matrix.shape[0]
    return column_rank_mean(matrix, (k - 1) // 2, k // 2 + 1)  # one rank when K is odd


def column_trimmed_mean(matrix: torch.Tensor, trim: int) -> torch.Tensor:
    """The mean of every column without its ``trim`` largest and ``trim`` smallest values."""
    k = matrix.shape[0]
    if not 0 <= 2 * trim < k:
        raise ValueError(f"cannot trim {trim} values off each end of {k}")
    return column_rank_mean(matrix, trim, k - trim)
