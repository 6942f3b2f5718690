"""A comparator network compiled to native code, for the per-coordinate order statistics on the CPU.

Run with torch, every comparator of :func:`.order_statistics.comparator_network` is an elementwise
minimum and maximum over a chunk of columns: the median of 50 rows makes 330 passes over each chunk,
12-15x FedAvg's single read of the matrix at K = 50, P = 1e6 on the 2-core CPU. Here the network
becomes straight-line C++: each wire is a local variable holding one 32-byte vector of columns (8
float32 or 4 float64), each comparator a vector ``min`` and ``max`` (GCC's vector extensions, so no
instruction set is named), and the compiler keeps the wires in registers or the L1 cache. Every value
is read once from the matrix and only the outputs are written: 2.9x FedAvg's time for the median and
3.1-3.2x for the trimmed mean at K = 50, P = 1e6 (BENCHMARKS.md ``order_statistics``). ``torch.compile``
fuses the same network, but took 36 s to build it and ran at 6.2x; numba's loop over a table of
comparators ran at 17-20x (one-off measurements while choosing, not benchmark rows).

A network is compiled once per (rows, network, outputs, dtype), in about 0.2 s for K = 50 and 3 s for
K = 200, and cached on disk (:mod:`.native_build`). Without a compiler, or when the build fails, the caller
keeps the torch network (:func:`compiled_network` returns ``None`` and logs why once); so do networks over
:data:`MAX_COMPARATORS` (the median of more than 240 rows), whose build would take tens of seconds.

The flags ``-ffinite-math-only -fno-signed-zeros`` let GCC emit ``minps``/``maxps`` for ``a < b ? a :
b``, which is exactly that instruction's rule; the matrix is finite (:meth:`.Aggregator.__call__`
refuses non-finite input) and the sign of a zero does not change its rank. ``-ffast-math`` is avoided:
in a shared library built by GCC before 13 it sets the process's flush-to-zero mode when loaded.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable

import torch

from fedmtl.methods.aggregation.native_build import load_or_warn

log = logging.getLogger(__name__)

VECTOR_BYTES = 32
FLAGS = ("-O3", "-march=native", "-ffinite-math-only", "-fno-signed-zeros")
MAX_COMPARATORS = 3000
"""Larger networks stay on torch: the build of straight-line code grows faster than its length (K = 200,
2,392 comparators: 3.3 s; K = 300 and 500, 4,426 and 7,989: 35 s and 38 s with the machine busy), and a
first aggregation should not wait for it. 3,000 covers the median up to K = 240 and the trimmed mean
(beta = 0.1) up to K = 230."""
C_TYPES = {torch.float32: "float", torch.float64: "double"}

Network = tuple[tuple[int, int], ...]
"""Comparators ``(low wire, high wire)`` in order: after each, the low wire holds the smaller value."""
Outputs = tuple[tuple[int, ...], ...]
"""Output row ``i`` is the mean of the wires ``outputs[i]`` after the network (one wire: its value)."""
RankKernel = Callable[[torch.Tensor, torch.Tensor, int, int], None]
"""``kernel(matrix, out, start, stop)`` writes the outputs of columns ``start:stop`` of ``matrix`` into
``out[:, start:stop]`` (rows may be strided; columns contiguous)."""


def kernel_source(rows: int, network: Network, outputs: Outputs, c_type: str) -> str:
    """C++ source of ``ranks(m, row_stride, start, stop, out, out_stride)`` for one network: output row
    ``i`` is the mean of the wires ``outputs[i]``, summed in their order (as :func:`.torch_network` does)."""
    wires = ", ".join(f"w{r} = {{}}" for r in range(rows))
    loads = "\n".join(f"    memcpy(&w{r}, m + {r} * row_stride, n * sizeof(scalar));" for r in range(rows))
    steps = "\n".join(
        f"    {{ vec a = w{low}, b = w{high}; w{low} = a < b ? a : b; w{high} = a < b ? b : a; }}"
        for low, high in network
    )
    stores = "\n".join(
        f"    {{ vec r = {' + '.join(f'w{wire}' for wire in group)};{f' r = r / (scalar){len(group)};' if len(group) > 1 else ''}"
        f" memcpy(out + {i} * out_stride, &r, n * sizeof(scalar)); }}"
        for i, group in enumerate(outputs)
    )
    return f"""#include <stdint.h>
#include <string.h>
typedef {c_type} scalar;
typedef scalar vec __attribute__((vector_size({VECTOR_BYTES})));
enum {{ LANES = {VECTOR_BYTES} / sizeof(scalar) }};

template <bool FULL>
static inline void block(const scalar *m, int64_t row_stride, scalar *out, int64_t out_stride, int64_t width) {{
    const int64_t n = FULL ? LANES : width;  // a full block copies a constant size: one vector load
    vec {wires};
{loads}
{steps}
{stores}
}}

extern "C" void ranks(const scalar *m, int64_t row_stride, int64_t start, int64_t stop, scalar *out,
                      int64_t out_stride) {{
    int64_t s = start;
    for (; s + LANES <= stop; s += LANES) block<true>(m + s, row_stride, out + s, out_stride, LANES);
    if (s < stop) block<false>(m + s, row_stride, out + s, out_stride, stop - s);
}}
"""


@functools.lru_cache(maxsize=64)
def compiled_network(rows: int, network: Network, outputs: Outputs, dtype: torch.dtype) -> RankKernel | None:
    """The native kernel of ``network`` on ``rows`` wires followed by the means ``outputs``, or ``None``
    when this machine cannot build it (no compiler, a failed build, a dtype without a C type) or the
    network is over :data:`MAX_COMPARATORS`."""
    c_type = C_TYPES.get(dtype)
    if c_type is None:
        return None
    if len(network) > MAX_COMPARATORS:
        log.info(
            "order statistics: %d comparators, over %d for a native build; using the torch network",
            len(network),
            MAX_COMPARATORS,
        )
        return None
    source = kernel_source(rows, network, outputs, c_type)
    library = load_or_warn(source, FLAGS, "network", log, "order statistics", "the torch network")
    if library is None:
        return None
    function = library.ranks
    function.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
    ]
    function.restype = None

    def kernel(matrix: torch.Tensor, out: torch.Tensor, start: int, stop: int) -> None:
        # ctypes lets go of the GIL during the call, so chunks on several threads run at once
        function(matrix.data_ptr(), matrix.stride(0), start, stop, out.data_ptr(), out.stride(0))

    kernel.library = library  # type: ignore[attr-defined]  # keeps the library loaded while the kernel lives
    return kernel


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this machine builds native networks for ``dtype`` (tried once, on a two-wire network)."""
    return compiled_network(2, ((0, 1),), ((0,),), dtype) is not None
