"""PCGrad's and FedFV's sequential conflict projections (:func:`.pcgrad.project_conflicts`) as native code.

The torch loop advances every row one position of its order per step, so each of the ``K - 1`` steps reads
and writes the kept inner products of every projecting row and gathers a Gramian row for each: at K = 1,000
about 20 MB a step, 0.39-0.52 s in all on the 2-core CPU, bound by the cache's bandwidth. Here each row runs
its whole order at once: its ``K`` inner products stay in the L1 cache and only the Gramian rows it projects
onto are read, in a loop of a few lines built by the system's C++ compiler (:mod:`.native_build`; 0.08-0.14 s
once, then loaded from the cache in under 1 ms). Each row is independent, so the rows are split over threads
(ctypes releases the GIL). Measured while choosing, at
K = 1,000 Gaussian rows: 56 ms on two threads against 517 ms (``benchmarks/gramian_solvers.py`` times
PCGrad's and FedFV's solves).

Same bits as the torch loop: each row sees the same operations in the same order (``shrink = -(c / n)``,
then ``dots + row * shrink`` per coordinate), and ``-ffp-contract=off`` keeps the compiler from fusing that
multiply and add into one rounding. Without a compiler, on a GPU, or for a Gramian that is not float64,
:func:`project_conflicts_native` returns ``None`` and the caller runs the torch loop.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections.abc import Callable

import torch

from fedmtl.methods.aggregation.native_build import load_or_warn

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-ffp-contract=off")
ROWS_PER_THREAD = 256
"""A thread for every this many rows, up to torch's thread count: at K = 200 one thread took 1.1 ms and two
3.7 ms (starting threads costs more than the work); at K = 1,000, 108 ms and 56 ms."""

SOURCE = """#include <stdint.h>
#include <string.h>

// Rows row_start..row_stop-1 of the projection: for row i (left as e_i when frozen), start from its
// Gramian row and for each j of orders[i] project when the current inner product with g_j is negative.
extern "C" void project(const double *gram, int64_t k, const int64_t *orders, const uint8_t *movable,
                        double *coefficients, double *dots, int64_t row_start, int64_t row_stop) {
    for (int64_t i = row_start; i < row_stop; ++i) {
        if (!movable[i]) continue;
        memcpy(dots, gram + i * k, k * sizeof(double));
        const int64_t *order = orders + i * (k - 1);
        for (int64_t step = 0; step < k - 1; ++step) {
            const int64_t j = order[step];
            const double norm = gram[j * k + j], current = dots[j];
            if (!(current < 0) || !(norm > 0)) continue;
            const double shrink = -(current / norm);
            coefficients[i * k + j] += shrink;
            const double *target = gram + j * k;
            for (int64_t t = 0; t < k; ++t) dots[t] = dots[t] + target[t] * shrink;
        }
    }
}
"""

ProjectionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int], None]


@functools.lru_cache(maxsize=1)
def compiled_projection() -> ProjectionKernel | None:
    """``kernel(gram, orders, movable, coefficients, dots, start, stop)``, or ``None`` when this machine
    cannot build it."""
    library = load_or_warn(SOURCE, FLAGS, "projection", log, "conflict projection", "the torch loop")
    if library is None:
        return None
    function = library.project
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    function.argtypes += [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    function.restype = None

    def kernel(
        gram: torch.Tensor,
        orders: torch.Tensor,
        movable: torch.Tensor,
        coefficients: torch.Tensor,
        dots: torch.Tensor,
        start: int,
        stop: int,
    ) -> None:
        pointers = (orders.data_ptr(), movable.data_ptr(), coefficients.data_ptr(), dots.data_ptr())
        function(gram.data_ptr(), gram.shape[0], *pointers, start, stop)

    kernel.library = library  # type: ignore[attr-defined]  # keeps the library loaded while the kernel lives
    return kernel


def project_conflicts_native(gram: torch.Tensor, orders: torch.Tensor, movable: torch.Tensor) -> torch.Tensor | None:
    """The coefficients of :func:`.pcgrad.project_conflicts` (``[K, K]``, same bits), or ``None`` where the
    kernel does not apply (not a float64 CPU Gramian) or cannot be built."""
    if gram.device.type != "cpu" or gram.dtype != torch.float64:
        return None
    kernel = compiled_projection()
    if kernel is None:
        return None
    k = gram.shape[0]
    if tuple(orders.shape) != (k, k - 1) or tuple(movable.shape) != (k,):  # the kernel reads by these shapes
        raise ValueError(f"orders {tuple(orders.shape)} and movable {tuple(movable.shape)} for a {k} x {k} Gramian")
    gram = gram.contiguous()
    orders = orders.to(torch.int64).contiguous()
    movable = movable.to(torch.uint8).contiguous()
    coefficients = torch.eye(k, dtype=torch.float64)
    threads = max(1, min(torch.get_num_threads(), k // ROWS_PER_THREAD))
    dots = torch.empty(threads, k, dtype=torch.float64)  # each thread's current inner products
    bounds = [(k * part // threads, k * (part + 1) // threads) for part in range(threads)]
    arguments = [(gram, orders, movable, coefficients, dots[part], *bounds[part]) for part in range(threads)]
    workers = [threading.Thread(target=kernel, args=args) for args in arguments[1:]]
    for worker in workers:
        worker.start()
    kernel(*arguments[0])
    for worker in workers:
        worker.join()
    return coefficients
