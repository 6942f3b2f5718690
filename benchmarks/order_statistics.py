"""The coordinate-wise median and trimmed mean against FedAvg: the native comparator network, the
torch network it replaces, and ``torch.sort``, on the same float32 ``[K, P]`` matrix.

For each size, times ``fedavg``, ``median`` and ``trimmed_mean`` (beta 0.1) as the server calls them
(``aggregator(inputs)``), then the median's order statistics with the torch network
(``order_statistics.torch_network`` over the same chunks and threads) and with ``torch.sort`` of every
column; calls alternate round by round so that the machine's noise hits all alike, after one warm-up
call each (the warm-up builds the native kernel, or finds it in the cache folder). Prints the min and
median of ``--repeats`` calls and their ratios to FedAvg's:

    python benchmarks/order_statistics.py [--sizes 50x1000000 200x100000] [--repeats 15] [--no-write]

Writes BENCHMARKS.md's ``order_statistics`` section. Nothing here is asserted in tests
(``tests/aggregation/test_native_network.py`` checks that the kernel equals the torch network).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import alternating_times, machine_info, write_section  # noqa: E402
from benchmarks.aggregation import make_inputs  # noqa: E402
from fedmtl.core.typed import parse  # noqa: E402
from fedmtl.methods.aggregation import (  # noqa: E402
    Aggregator,
    native_network,  # noqa: E402
    order_statistics,
)


def torch_network_median(matrix: torch.Tensor) -> torch.Tensor:
    """The median as before the native kernel: the torch network over the same chunks and threads."""
    k = matrix.shape[0]
    low, high = (k - 1) // 2, k // 2 + 1
    network = order_statistics.rank_range_network(k, low, high)
    return order_statistics.run_network(matrix, network, (tuple(range(low, high)),), native=False)[0]


def sort_median(matrix: torch.Tensor) -> torch.Tensor:
    ordered = matrix.sort(dim=0).values
    k = matrix.shape[0]
    return (ordered[(k - 1) // 2] + ordered[k // 2]) / 2


def size_rows(k: int, p: int, repeats: int) -> list[str]:
    inputs = make_inputs(k, p, torch.device("cpu"))
    built = {name: parse(Aggregator, {"name": name}, "benchmark") for name in ("fedavg", "median", "trimmed_mean")}
    calls: dict[str, Callable[[], object]] = {f"`{name}`": partial(a, inputs) for name, a in built.items()}
    calls["median, torch network"] = lambda: torch_network_median(inputs.matrix)
    if k * p <= 50 * 1_000_000:
        calls["median, `torch.sort`"] = lambda: sort_median(inputs.matrix)
    times = alternating_times(calls, repeats)  # the warm-up builds the native kernel, or finds it cached
    base_min, base_median = min(times["`fedavg`"]), statistics.median(times["`fedavg`"])
    rows = []
    for name, values in times.items():
        low, middle = min(values), statistics.median(values)
        rows.append(
            f"| {k} x {p:,} | {name} | {low * 1e3:.1f} ms | {middle * 1e3:.1f} ms "
            f"| {low / base_min:.1f}x | {middle / base_median:.1f}x |"
        )
        print(rows[-1], flush=True)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["50x1000000", "10x1000000", "200x100000"], help="KxP")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    sizes = [tuple(int(part) for part in size.split("x")) for size in args.sizes]
    native = native_network.available()
    load = os.getloadavg()[0]
    header = (
        "| K x P | call | min | median | min / FedAvg's min | median / FedAvg's median |\n|---|---|---|---|---|---|"
    )
    print(header)
    rows = [row for k, p in sizes for row in size_rows(k, p, args.repeats)]
    command = f"python benchmarks/order_statistics.py --sizes {' '.join(args.sizes)} --repeats {args.repeats}"
    text = (
        f"## Coordinate-wise median and trimmed mean (`{command}`)\n\n"
        f"Machine: {machine_info()}, {torch.get_num_threads()} torch threads; 1-minute load average {load:.2f} "
        f"at start; native kernel {'built' if native else 'NOT available (no C++ compiler): torch network'}. "
        "Float32 Gaussian rows; the calls alternate, one warm-up each, then "
        f"{args.repeats} timed calls. `median` and `trimmed_mean` (beta 0.1) as the server calls them, with the "
        "native comparator network (`fedmtl/methods/aggregation/native_network.py`); *torch network*: the "
        "same network run with torch's elementwise minimum and maximum, as before; `torch.sort`: every "
        "column sorted.\n\n" + header + "\n" + "\n".join(rows) + "\n"
    )
    if not args.no_write:
        write_section("order_statistics", text)


if __name__ == "__main__":
    main()
