"""Both simulation engines against the size of the federation, at a fixed number of clients per round.

For each N in ``--clients`` (default 50 500 2000 5000) and each engine in ``--engines`` (default
direct flower) this runs ``simulate.py`` as a subprocess (through :func:`benchmarks.scale.run_one`,
which samples the memory of the whole process tree from ``/proc``) with ``--trained`` clients
trained and evaluated per round (``server.fraction_fit = server.fraction_evaluate = trained / N``):

    python benchmarks/engines.py [--clients 50 500 2000 5000] [--engines direct flower] [--trained 10] [--rounds 6] [--no-write]

Reported per run: seconds from launch to the end of round 1 (imports, Ray, workers, identifying
the clients, the round-0 evaluation, the first round), the median of the training-only rounds
2.., the whole run, and peak memory; then each engine's ratio from the smallest to the largest N.
Writes BENCHMARKS.md's ``engines`` section. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import machine_info, write_section  # noqa: E402
from benchmarks.scale import GIB, MIB, RunResult, _interrupt, add_run_arguments, run_one  # noqa: E402


def run_for(clients: int, engine: str, args: argparse.Namespace) -> RunResult:
    fraction = args.trained / clients
    run_args = argparse.Namespace(**vars(args))
    run_args.fraction_fit = fraction
    run_args.set = [*args.set, f"simulation.engine={engine}"]
    return run_one(clients, fraction, run_args)


def table(results: dict[tuple[int, str], RunResult]) -> str:
    lines = [
        "| clients N | engine | trained / evaluated per round | load at start | round 1 done (s) | training-only rounds 2.. (s, median) "
        "| whole run (s) | peak RSS, tree (GiB) | driver peak (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (n, engine), r in sorted(results.items()):
        train_only = r.train_only()
        lines.append(
            f"| {n:,} | `{engine}` | {r.trained} / {r.evaluated} | {r.load_at_start:.1f} | {r.first_round_done:.1f} | "
            f"{'–' if train_only is None else f'{train_only:.3f}'} | {r.wall:.1f} | {r.sampled.peak_rss / GIB:.2f} | {r.sampled.driver_hwm / MIB:.0f} |"
        )
    return "\n".join(lines)


def growth(results: dict[tuple[int, str], RunResult], engines: list[str]) -> str:
    ns = sorted({n for n, _ in results})
    lines = [
        f"| engine | round 1 done: N={ns[-1]:,} / N={ns[0]:,} | training-only round: N={ns[-1]:,} / N={ns[0]:,} | whole run: N={ns[-1]:,} / N={ns[0]:,} |",
        "|---|---|---|---|",
    ]
    for engine in engines:
        small, large = results[(ns[0], engine)], results[(ns[-1], engine)]
        rounds = [r.train_only() for r in (small, large)]
        ratio = "–" if None in rounds else f"{rounds[1] / rounds[0]:.2f}x"  # type: ignore[operator]
        lines.append(
            f"| `{engine}` | {large.first_round_done / small.first_round_done:.2f}x | {ratio} | {large.wall / small.wall:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 500, 2000, 5000], metavar="N")
    parser.add_argument("--engines", nargs="+", default=["direct", "flower"], choices=["direct", "flower"])
    parser.add_argument("--trained", type=int, default=10, help="clients trained (and evaluated) per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--section", default="engines", help="BENCHMARKS.md section to write (engines_million: the million-client rows)"
    )
    add_run_arguments(parser, max_wait=120.0)
    args = parser.parse_args()
    if args.trained > min(args.clients):
        parser.error("--trained must not exceed the smallest --clients")
    signal.signal(signal.SIGTERM, _interrupt)  # so that the runs are stopped on kill as on Ctrl-C
    load = os.getloadavg()[0]
    results = {(n, engine): run_for(n, engine, args) for n in sorted(set(args.clients)) for engine in args.engines}
    command = (
        f"python benchmarks/engines.py --clients {' '.join(map(str, sorted(set(args.clients))))} --engines {' '.join(args.engines)} --trained {args.trained} --rounds {args.rounds}"
        + ("" if args.section == "engines" else f" --section {args.section}")
    )
    text = "\n".join(
        [
            f"Command: `{command}`. Each run: `simulate.py` with the default model, {args.trained} clients trained and "
            f"{args.trained} evaluated per round (`server.fraction_fit = server.fraction_evaluate = {args.trained} / N`), "
            f"{args.rounds} rounds, evaluation at round 0 and in the last round, checkpoints every round. Machine: {machine_info()}; "
            f"1-minute load average {load:.1f} before the runs (each run waits up to {args.max_wait:g} s for it to fall below "
            f"{args.max_load:g}; the table shows where it started).",
            "",
            table(results),
            "",
            "From the smallest to the largest N (1.00x = flat in N):",
            "",
            growth(results, args.engines),
            "",
            "Round 1 done: seconds from launching simulate.py (Python imports, Ray start, worker start-up, finding out which "
            "client each node plays, round-0 evaluation, the first round). The direct engine knows each node's client from "
            "placing the nodes; Flower's engine asks every node (one query message each), and its poller scans every node "
            "every 0.1 s. Training-only rounds: rounds 2.. from `server.jsonl` without the last (which also evaluates more).",
        ]
    )
    print(text)
    if not args.no_write:
        title = "Engines at scale" + ("" if args.section == "engines" else f": {args.section}")
        write_section(args.section, f"## {title} (`benchmarks/engines.py`)\n\n{text}")


if __name__ == "__main__":
    main()
