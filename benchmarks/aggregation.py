"""Seconds per aggregation for every registered aggregator, against FedAvg on the same inputs.

Each method aggregates the same float32 ``[K, P]`` matrix (Gaussian rows, with losses, sample
counts and a seeded generator); one untimed warm-up call, then the median of ``--repeats`` timed
calls of ``aggregator(inputs)`` (Gramian, solve and combination included). Grid: K in {10, 50, 200}
x P in {1e5, 1e6, 1e7}; ``--quick``: K in {10, 50} x P in {1e5, 1e6}. Combinations whose matrix
(``K * P * 4`` bytes) exceeds ``--max-bytes`` are skipped and listed. ``mgda`` and ``upgrad`` are
timed again with the exact float64 Gramian.

    python benchmarks/aggregation.py [--quick] [--device cpu|cuda] [--max-bytes 4294967296]
                                     [--repeats 3] [--no-write]

Prints a table (seconds, and ratio to FedAvg) and writes it to BENCHMARKS.md between
``<!-- aggregation:start -->`` and ``<!-- aggregation:end -->``. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import machine_info, write_section  # noqa: E402
from fedmtl.core.typed import parse  # noqa: E402
from fedmtl.methods.aggregation import AGGREGATORS, AggregationInput, Aggregator  # noqa: E402
from fedmtl.methods.aggregation.gramian import GramianPrecision  # noqa: E402

FULL_GRID = ((10, 50, 200), (100_000, 1_000_000, 10_000_000))
QUICK_GRID = ((10, 50), (100_000, 1_000_000))
BYTES_PER_ENTRY = 4  # float32
BASELINE = "fedavg"
# Non-default settings worth timing on their own: a solver that needs no optional package, and
# FedMGDA+'s box-constrained solve.
EXTRA_CONFIGS: tuple[dict[str, Any], ...] = (
    {"name": "upgrad", "solver": "nnls"},
    {"name": "mgda", "normalization": "l2", "max_deviation": 0.05},
    {"name": "krum", "f": 2, "m": 5},
    {"name": "krum", "f": 2, "m": 5, "then": {"name": "upgrad"}},
)


# Methods timed once more with the exact float64 Gramian (``server.gramian_precision: float64``).
FLOAT64_GRAMIAN = ("mgda", "upgrad")


@dataclass(frozen=True)
class Method:
    label: str
    aggregator: Aggregator
    precision: GramianPrecision = "float32"


def label(config: dict[str, Any]) -> str:
    """``krum[f=2,m=5,then=upgrad]``: a nested component shows as its own label."""
    params = ",".join(
        f"{key}={label(value) if isinstance(value, dict) else value}" for key, value in config.items() if key != "name"
    )
    return f"{config['name']}[{params}]" if params else config["name"]


def methods(configs: list[dict[str, Any]]) -> tuple[list[Method], list[str]]:
    """Build every config through the config parser; those whose solver packages are missing are listed."""
    built, unavailable = [], []
    for config in configs:
        try:
            built.append(Method(label(config), parse(Aggregator, dict(config), "benchmark.aggregator")))
        except ImportError as err:
            unavailable.append(f"`{label(config)}`: {err}")
    exact = [
        Method(f"{m.label} (float64 Gramian)", m.aggregator, "float64") for m in built if m.label in FLOAT64_GRAMIAN
    ]
    return built + exact, unavailable


ROWS = {
    # independent Gaussian rows: pairwise cosines about 0, well conditioned (the float32 Gramian is used)
    "gaussian": 0.0,
    # a shared component: pairwise cosines about 0.97, as when clients' updates mostly agree; the rows'
    # smallest correlation eigenvalue (about 0.03) is below 0.05: the centred float32 Gramian is used
    "similar": 0.97,
}


def make_inputs(k: int, p: int, device: torch.device, rows: str = "gaussian", seed: int = 0) -> AggregationInput:
    generator = torch.Generator().manual_seed(seed)
    cosine = ROWS[rows]
    matrix = torch.randn(k, p, generator=generator, dtype=torch.float32)
    if cosine:
        matrix.mul_((1 - cosine) ** 0.5).add_(cosine**0.5 * torch.randn(1, p, generator=generator, dtype=torch.float32))
    matrix = matrix.to(device)
    return AggregationInput(
        matrix=matrix,
        num_examples=torch.randint(1, 100, (k,), generator=generator).to(torch.float64),
        losses=0.1 + torch.rand(k, generator=generator, dtype=torch.float64),
        generator=torch.Generator().manual_seed(seed + 1),
    )


def seconds_per_call(method: Method, inputs: AggregationInput, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call (synchronising CUDA around each)."""
    aggregator, inputs = method.aggregator, replace(inputs, gramian_precision=method.precision)

    def timed() -> float:
        if inputs.matrix.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        aggregator(inputs)
        if inputs.matrix.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()
    return statistics.median(timed() for _ in range(repeats))


def fmt_count(value: int) -> str:
    exponent = len(str(value)) - 1
    return f"1e{exponent}" if value == 10**exponent else str(value)


def fmt_bytes(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def run_grid(
    grid: tuple[tuple[int, ...], tuple[int, ...]],
    device: torch.device,
    max_bytes: int,
    repeats: int,
    to_time: list[Method],
    rows: str = "gaussian",
) -> tuple[list[tuple[int, int]], list[str], dict[tuple[str, int, int], float]]:
    """Time every method on every (K, P) within the memory budget; return columns, skips and seconds."""
    columns, skipped, seconds = [], [], {}
    for k, p in itertools.product(*grid):
        size = k * p * BYTES_PER_ENTRY
        if size > max_bytes:
            skipped.append(f"K={k} P={fmt_count(p)} ({fmt_bytes(size)} > {fmt_bytes(max_bytes)})")
            continue
        inputs = make_inputs(k, p, device, rows)
        columns.append((k, p))
        for method in to_time:
            seconds[method.label, k, p] = seconds_per_call(method, inputs, repeats)
            print(f"  K={k:<4} P={fmt_count(p):<5} {method.label:<45} {seconds[method.label, k, p]:.4f} s", flush=True)
        del inputs
    return columns, skipped, seconds


def table(to_time: list[Method], columns: list[tuple[int, int]], seconds: dict[tuple[str, int, int], float]) -> str:
    header = "| method | " + " | ".join(f"K={k}, P={fmt_count(p)}" for k, p in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for method in to_time:
        cells = []
        for k, p in columns:
            value, base = seconds[method.label, k, p], seconds[BASELINE, k, p]
            cells.append(f"{value:.4f} s ({value / base:.1f}x)")
        lines.append(f"| `{method.label}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    args: argparse.Namespace, device: torch.device, body: str, skipped: list[str], unavailable: list[str], load: float
) -> str:
    processor = platform.processor() or platform.machine()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({processor})"
    lines = [
        f"Seconds per `aggregator(inputs)` call on float32 rows ({args.rows}: pairwise cosines about {ROWS[args.rows]:g}), median of {args.repeats} after one warm-up, "
        f"with the ratio to `{BASELINE}` on the same inputs ({'quick' if args.quick else 'full'} grid). "
        f"Device: {device_name}; machine: {machine_info(device.type)}, {torch.get_num_threads()} torch threads; "
        f"1-minute load average before the run: {load:.1f} (other work on the machine inflates and scatters times).",
        "",
        body,
        "",
        "Every method except `fedavg`, `median` and `trimmed_mean` builds the K x K Gramian as one float32 matrix product "
        "(`server.gramian_precision: "
        "float32`, the default; Gaussian rows are well conditioned, so that product is all), solves on it "
        "in float64, then combines the rows in one pass: at large P the Gramian product (2 K^2 P flops, compute-bound) "
        "and the reads of the matrix dominate, at small P the solver (SLSQP for the FedMGDA+ box, one NNLS per "
        "row for `upgrad[solver=nnls]`; `benchmarks/gramian_solvers.py` times the solves alone). Rows marked *float64 Gramian* use the exact chunked float64 accumulation "
        "instead. Rows sharing a large component (`--rows similar`) pay the plain product, then a centred one "
        "(`fedmtl/methods/aggregation/gramian.py`), about as much as the float64 pass alone; nearly identical rows pay the "
        "plain product and the float64 one. `median` and `trimmed_mean` select order statistics per coordinate "
        "(`fedmtl/methods/aggregation/order_statistics.py`) with a comparator network run on all coordinates at "
        "once (Batcher's odd-even merge sort pruned to the needed ranks: 29 comparators for the median of 10 rows,"
        " 330 of 50, 2,392 of 200): no Gramian. On the CPU the network is compiled to native code "
        "(`fedmtl/methods/aggregation/native_network.py`: each column's values held in vector registers, every "
        "value read once), so the cost is the comparators' arithmetic, one vector minimum and maximum per comparator "
        "for every 8 float32 coordinates, and the ratio to FedAvg's one read still grows with K; without a C++ "
        "compiler, and on a GPU, each comparator is a torch elementwise minimum and maximum over a chunk of "
        "columns (`benchmarks/order_statistics.py` times both).",
    ]
    if skipped:
        lines += ["", f"Skipped (matrix over the `--max-bytes` budget): {'; '.join(skipped)}."]
    if unavailable:
        lines += ["", "Not timed (optional solver packages missing): " + "; ".join(unavailable)]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="K in {10, 50}, P in {1e5, 1e6}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--max-bytes", type=int, default=4 * 2**30, help="skip K x P float32 matrices above this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rows", choices=sorted(ROWS), default="gaussian", help="gaussian: cosines ~0; similar: cosines ~0.97"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    load = os.getloadavg()[0]
    device = torch.device(args.device)
    to_time, unavailable = methods([{"name": name} for name in AGGREGATORS] + list(EXTRA_CONFIGS))
    columns, skipped, seconds = run_grid(
        QUICK_GRID if args.quick else FULL_GRID, device, args.max_bytes, args.repeats, to_time, args.rows
    )
    text = report(args, device, table(to_time, columns, seconds), skipped, unavailable, load)
    print(text)
    if not args.no_write:
        section, where = ("aggregation", "") if device.type == "cpu" else ("aggregation_cuda", " on a GPU")
        if args.rows != "gaussian":
            section, where = f"{section}_{args.rows}", f"{where}, {args.rows} rows"
        command = (
            f"benchmarks/aggregation.py --device {device.type}"
            + (" --quick" if args.quick else "")
            + (f" --rows {args.rows}" if args.rows != "gaussian" else "")
        )
        write_section(section, f"## Aggregation cost{where} (`{command}`)\n\n" + text)


if __name__ == "__main__":
    main()
