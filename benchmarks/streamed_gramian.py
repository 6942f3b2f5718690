"""The time from the last reply to the aggregate when the Gramian is built while the rows arrive
(issue #25), against the one-shot call and against FedAvg, every Gramian method side by side.

For each K x P and each method: the rows (float32, Gaussian or ``--rows similar``) are written into a
:class:`~fedmtl.methods.aggregation.gramian_stream.GramianStream` in a random order, all but one
(untimed: that is what the server does while it waits); then, timed, the last row is written and
settled, and the method aggregates with the stream's products (the checks on them, the solve and the
combining pass included): what is left after the last reply. Beside it, the one-shot call
``aggregator(inputs)`` (today's path when the rows come together) and FedAvg's call on the same rows.
Median of ``--repeats`` (each with a fresh stream and a fresh last slot), min beside it.

    python benchmarks/streamed_gramian.py [--sizes 50x1000000 200x100000] [--rows gaussian|similar]
                                          [--repeats 3] [--no-write]

Writes BENCHMARKS.md's ``streamed_gramian`` section (``streamed_gramian_similar`` for similar rows).
Nothing here is asserted in tests (``tests/test_gramian_stream.py`` checks the products).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import machine_info, write_section  # noqa: E402
from benchmarks.aggregation import make_inputs  # noqa: E402
from fedmtl.core.typed import parse  # noqa: E402
from fedmtl.methods.aggregation import AggregationInput, Aggregator  # noqa: E402
from fedmtl.methods.aggregation.gramian import combine_rows, full_float32_matmul  # noqa: E402
from fedmtl.methods.aggregation.gramian_stream import GramianStream  # noqa: E402

NOTE = "What is left after the last reply is bounded below by one read of every row for the last tile's products (its 8 rows against all K) and one for the combining pass: about 2x FedAvg's call, which reads the rows once, plus the tile's arithmetic, which small [8, 65,536] x [65,536, 8] products do at a fraction of the machine's matrix-product rate. The solve is the rest (UPGrad, CAGrad at K = 200). Rows that mostly agree (`--rows similar`) fail the float32 products' precision check, and the centred Gramian is then computed from all rows at the end: streaming saves only the first product there."
METHODS = ("mgda", "cagrad", "upgrad", "imtl_g", "nash_mtl", "aligned_mtl", "pcgrad", "fedfv")


def last_reply_seconds(aggregator: Aggregator, inputs: AggregationInput, seed: int) -> float:
    """Every row but one streamed (untimed), then the last row, its tile and the aggregation (timed)."""
    k, p = inputs.matrix.shape
    order = random.Random(seed).sample(range(k), k)
    stream = GramianStream(k, p)
    for slot in order[:-1]:
        stream.row(slot).copy_(inputs.matrix[slot])
        stream.settle(slot)
    last = order[-1]
    start = time.perf_counter()
    stream.row(last).copy_(inputs.matrix[last])
    stream.settle(last)
    aggregator(replace(inputs, matrix=stream.matrix(), products=stream.gramian()))
    return time.perf_counter() - start


def call_seconds(aggregator: Aggregator, inputs: AggregationInput) -> float:
    start = time.perf_counter()
    aggregator(inputs)
    return time.perf_counter() - start


def floor_seconds(inputs: AggregationInput) -> float:
    """The bare float32 Gramian product and one combining pass: what any one-shot Gramian call must do."""
    weights = torch.full((inputs.num_rows,), 1.0 / inputs.num_rows, dtype=torch.float64)
    start = time.perf_counter()
    with full_float32_matmul():
        (inputs.matrix @ inputs.matrix.T).double()
    combine_rows(weights, inputs.matrix)
    return time.perf_counter() - start


def measure(k: int, p: int, rows: str, repeats: int) -> list[tuple[str, list[float], list[float]]]:
    """(method, last-reply seconds, one-shot seconds) per method; FedAvg first (its call both times),
    then the floor of a one-shot call (bare Gramian product + combining pass, both times)."""
    inputs = make_inputs(k, p, torch.device("cpu"), rows)
    fedavg = parse(Aggregator, {"name": "fedavg"}, "benchmark.aggregator")
    call_seconds(fedavg, inputs)  # warm-up
    base = [call_seconds(fedavg, inputs) for _ in range(repeats)]
    floor_seconds(inputs)
    floor = [floor_seconds(inputs) for _ in range(repeats)]
    found = [("fedavg", base, base), ("floor", floor, floor)]
    for name in METHODS:
        aggregator = parse(Aggregator, {"name": name}, "benchmark.aggregator")
        call_seconds(aggregator, inputs)  # warm-up (and the solver's first call)
        streamed = [last_reply_seconds(aggregator, inputs, seed) for seed in range(repeats)]
        one_shot = [call_seconds(aggregator, inputs) for _ in range(repeats)]
        found.append((name, streamed, one_shot))
        print(f"  K={k} P={p:g} {name}: last reply {statistics.median(streamed) * 1e3:.1f} ms, "
              f"one-shot {statistics.median(one_shot) * 1e3:.1f} ms", flush=True)  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["50x1000000", "200x100000"], metavar="KxP")
    parser.add_argument("--rows", choices=("gaussian", "similar"), default="gaussian")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
    load = os.getloadavg()[0]
    lines = []
    for k, p in sizes:
        found = measure(k, p, args.rows, args.repeats)
        fedavg, floor = statistics.median(found[0][1]), statistics.median(found[1][1])
        lines += [
            f"**K = {k}, P = {p:,}** (FedAvg's call: {fedavg * 1e3:.1f} ms; bare float32 Gramian product + one "
            f"combining pass: {floor * 1e3:.1f} ms, {floor / fedavg:.1f}x FedAvg)",
            "",
            "| method | after the last reply (median, min) | / FedAvg | one-shot call (median) | / FedAvg "
            "| one-shot / (product + combine) | after the last reply / one-shot |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, streamed, one_shot in found[2:]:
            s, o = statistics.median(streamed), statistics.median(one_shot)
            lines.append(
                f"| `{name}` | {s * 1e3:.1f} ms, {min(streamed) * 1e3:.1f} | {s / fedavg:.1f}x | {o * 1e3:.1f} ms | "
                f"{o / fedavg:.1f}x | {o / floor:.2f} | {s / o:.2f} |"
            )
        lines.append("")
    command = f"python benchmarks/streamed_gramian.py --sizes {' '.join(args.sizes)} --rows {args.rows} --repeats {args.repeats}"
    text = "\n".join(
        [
            f"Command: `{command}`. Machine: {machine_info()}; 1-minute load average {load:.1f} at start. Rows: "
            f"{args.rows}, float32; median of {args.repeats} (each after a warm-up call). *After the last reply*: "
            "the other rows streamed already, the last one written, its tile's products computed, then the method's "
            "call with the stream's products (checks, solve, combining pass).",
            "",
            *lines,
            NOTE,
        ]
    )
    print(text)
    if not args.no_write:
        section = "streamed_gramian" if args.rows == "gaussian" else "streamed_gramian_similar"
        title = "## The Gramian built as replies arrive (`benchmarks/streamed_gramian.py"
        title += "`)" if args.rows == "gaussian" else " --rows similar`)"
        write_section(section, f"{title}\n\n{text}")


if __name__ == "__main__":
    main()
