"""Milliseconds of the solve on the ``K x K`` Gramian, per Gramian-based aggregator: everything after the
Gramian product and before the combine pass (``weights_from_gramian``).

The Gramian of ``K`` float32 rows of ``P = 1e5`` (Gaussian rows, cosines about 0, or ``--rows similar``,
cosines about 0.97) is built once, untimed, as the aggregators build it; then each method's solve is
timed: one untimed warm-up call, the median of ``--repeats`` calls. A method is not timed at the next K
when its time there, extrapolated as K cubed, would exceed ``--budget-s`` (listed). IMTL-G, a
closed-form solve (one pseudo-inverse), is the yardstick: each row shows its ratio to IMTL-G's time.
Then every method's whole call on the same rows (``--whole-repeats``; Gramian product, checks, solve,
combining pass), the methods alternating call by call, against IMTL-G's whole call.

    python benchmarks/gramian_solvers.py [--k 50 200 1000] [--rows gaussian|similar] [--repeats 3]
                                         [--budget-s 20] [--whole-repeats 5] [--no-write]

Prints a table and writes it to BENCHMARKS.md between ``<!-- gramian_solvers[_similar]:start -->`` and
``... :end -->``. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import alternating_times, machine_info, write_section  # noqa: E402
from benchmarks.aggregation import ROWS, Method, make_inputs, methods  # noqa: E402
from fedmtl.methods.aggregation import AGGREGATORS  # noqa: E402
from fedmtl.methods.aggregation.base import GramianAggregator  # noqa: E402
from fedmtl.methods.aggregation.dual_cone_batched import project_rows  # noqa: E402
from fedmtl.methods.aggregation.gramian import gramian  # noqa: E402
from fedmtl.methods.aggregation.torchjd_methods import torchjd_projection_gramian  # noqa: E402

P = 100_000
YARDSTICK = "imtl_g"
SOLVER_VARIANTS = ({"name": "upgrad", "solver": "nnls"}, {"name": "upgrad", "solver": "quadprog"})


def gramian_methods() -> tuple[list[Method], list[str]]:
    configs = [{"name": name} for name in AGGREGATORS] + list(SOLVER_VARIANTS)
    built, unavailable = methods(configs)
    return [m for m in built if isinstance(m.aggregator, GramianAggregator) and m.precision == "float32"], unavailable


def seconds(method: Method, gram: torch.Tensor, inputs, repeats: int) -> float:
    aggregator = method.aggregator
    assert isinstance(aggregator, GramianAggregator)

    def timed() -> float:
        start = time.perf_counter()
        aggregator.weights_from_gramian(gram, inputs)
        return time.perf_counter() - start

    first = timed()  # warm-up (imports, caches); also the only call when it is slow
    return first if first > 2.0 else statistics.median(timed() for _ in range(repeats))


PRODUCT = "one K x K by K x K float64 matrix product"


def whole_calls(to_time: list[Method], inputs, repeats: int) -> dict[str, float]:
    """Median seconds of each method's whole call ``aggregator(inputs)`` (Gramian product, checks, solve,
    combine), the methods alternating call by call after one warm-up each."""
    calls = {method.label: partial(method.aggregator, inputs) for method in to_time}
    return {label: statistics.median(values) for label, values in alternating_times(calls, repeats).items()}


def largest_free_set(gram: torch.Tensor) -> int:
    """The largest free set UPGrad's K projections end with (CG solves them above 32, Cholesky below)."""
    k = gram.shape[0]
    lower = torch.eye(k, dtype=torch.float64) / k
    return int((project_rows(torchjd_projection_gramian(gram, 1e-4), lower) > lower).sum(dim=1).max())


def product_s(k: int, repeats: int) -> float:
    """Seconds (the fastest of at least 7) of one ``[K, K] x [K, K]`` float64 product: the unit of UPGrad's
    batched solver, whose FISTA steps take one such product each in float32 and whose CG steps one in float64."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(k, k, dtype=torch.float64, generator=generator) for _ in range(2))
    a @ b  # warm-up

    def timed() -> float:
        start = time.perf_counter()
        a @ b
        return time.perf_counter() - start

    return min(timed() for _ in range(max(repeats, 7)))


def table_head(ks: list[int]) -> list[str]:
    """A markdown table's header rows: a method column, then one column per K."""
    return ["| method | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--rows", choices=sorted(ROWS), default="gaussian")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=30.0, help="skip a K where a solve would take longer")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--whole-repeats", type=int, default=5, help="whole calls per method and K (0: none)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    to_time, unavailable = gramian_methods()
    times: dict[tuple[str, int], float] = {}
    over_budget: dict[str, int] = {}
    free_sizes: dict[int, int] = {}
    whole: dict[int, dict[str, float]] = {}
    default_methods = [m for m in to_time if "[" not in m.label]  # the solver variants are timed in the solve table
    ks = sorted(args.k)
    for k, next_k in zip(ks, [*ks[1:], None]):
        inputs = make_inputs(k, P, torch.device("cpu"), args.rows)
        gram = gramian(inputs.matrix, "float32")
        for method in to_time:
            if method.label in over_budget:
                continue
            times[method.label, k] = value = seconds(method, gram, inputs, args.repeats)
            print(f"K={k} {method.label}: {value * 1e3:.1f} ms", flush=True)
            if next_k is not None and value * (next_k / k) ** 3 > args.budget_s:
                over_budget[method.label] = next_k
        times[PRODUCT, k], free_sizes[k] = product_s(k, args.repeats), largest_free_set(gram)
        print(f"K={k} {PRODUCT}: {times[PRODUCT, k] * 1e3:.1f} ms (f = {free_sizes[k]})", flush=True)
        if args.whole_repeats:
            whole[k] = whole_calls(default_methods, inputs, args.whole_repeats)
            print(f"K={k} whole calls: " + ", ".join(f"{m} {v * 1e3:.0f} ms" for m, v in whole[k].items()), flush=True)
    lines = [
        f"Machine: {machine_info()}; load average {load:.2f} at start. Rows: {args.rows}, P = {P:,}; "
        f"median of {args.repeats} calls after a warm-up (one call when it took over 2 s; the product row: the "
        f"fastest of at least 7). "
        f"Ratio: to `{YARDSTICK}` at the same K.",
        "",
        *table_head(ks),
    ]
    for label in [m.label for m in to_time] + [PRODUCT]:
        cells = []
        for k in ks:
            measured = times.get((label, k))
            base = times.get((YARDSTICK, k))
            cells.append(
                "not timed"
                if measured is None
                else f"{measured * 1e3:.1f} ms ({measured / base:.1f}x)"
                if base
                else "?"
            )
        lines.append(f"| {label if label == PRODUCT else f'`{label}`'} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{free_sizes[k]} at K = {k}" for k in ks)
    lines += [
        "",
        f"f, the largest free set of UPGrad's K projections: {sizes}. UPGrad's batched solver (`upgrad`) "
        "works on all K projections at once in products like the last row's: a power iteration for FISTA's step, "
        "FISTA steps in float32 that guess the free sets (one product each, about half the row's time), then "
        "primal-dual active-set steps whose linear solves are batched conjugate-gradient steps (one product each, "
        "which also give the multipliers) where the free sets are wider than 32, and batched Cholesky factorizations "
        "of the free-set blocks below. `mgda` and `cagrad` take primal-dual active-set steps on their own optimality "
        "conditions (one Cholesky solve of the support's block each); `pcgrad` and `fedfv` run each row's K - 1 "
        "sequential projections in native code where a C++ compiler is present "
        "(`fedmtl/methods/aggregation/native_projection.py`), the row's inner products kept in the L1 cache.",
    ]
    if whole:
        lines += [
            "",
            f"The whole call `aggregator(inputs)` (float32 Gramian product, checks, solve, combining pass) on the "
            f"same rows, median of {args.whole_repeats} calls, the methods alternating call by call; ratio to "
            f"`{YARDSTICK}`'s whole call at the same K:",
            "",
            *table_head(list(whole)),
        ]
        for method in default_methods:
            cells = [
                f"{whole[k][method.label] * 1e3:.0f} ms ({whole[k][method.label] / whole[k][YARDSTICK]:.2f}x)"
                for k in whole
            ]
            lines.append(f"| `{method.label}` | " + " | ".join(cells) + " |")
    if over_budget:
        slow = ", ".join(f"`{m}` at K = {k} (extrapolated over {args.budget_s:g} s)" for m, k in over_budget.items())
        lines += ["", f"Not timed at larger K: {slow}."]
    if unavailable:
        lines += ["", "Not timed (optional solver packages missing): " + "; ".join(unavailable)]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        suffix = "" if args.rows == "gaussian" else f"_{args.rows}"
        command = "benchmarks/gramian_solvers.py" + (f" --rows {args.rows}" if suffix else "")
        write_section(f"gramian_solvers{suffix}", f"## Solves on the K x K Gramian (`{command}`)\n\n{text}")


if __name__ == "__main__":
    main()
