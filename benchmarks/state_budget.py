"""The driver's memory with and without a budget for the clients' private state (issue #25).

Runs ``simulate.py`` (through :func:`benchmarks.scale.run_one`, which samples the process tree's
memory from ``/proc``) on the direct engine with ``--clients`` clients, ``--trained`` of them trained
per round for ``--rounds`` rounds (so that most clients train once and keep private state), first
without a budget and then with each ``simulation.engine.state_memory_mb`` in ``--budgets``:

    python benchmarks/state_budget.py [--clients 20000] [--trained 1000] [--rounds 16] [--budgets 8] [--no-write]

Reported per run: the driver's peak memory (``VmHWM``), the private state on disk, whole-run and
training-round seconds. Writes BENCHMARKS.md's ``state_budget`` section. Nothing here is asserted in
tests (``tests/test_state_budget.py`` checks that a budget leaves the results unchanged).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import machine_info, write_section  # noqa: E402
from benchmarks.scale import MIB, RunResult, _interrupt, add_run_arguments, run_one  # noqa: E402


def run_with(budget: float | None, args: argparse.Namespace) -> RunResult:
    run_args = argparse.Namespace(**vars(args))
    run_args.fraction_fit = args.trained / args.clients
    budget_setting = [] if budget is None else [f"simulation.engine.state_memory_mb={budget}"]
    run_args.set = [*args.set, "simulation.engine=direct", *budget_setting]
    return run_one(args.clients, args.evaluated / args.clients, run_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--trained", type=int, default=1_000, help="clients trained per round")
    parser.add_argument("--evaluated", type=int, default=100, help="clients evaluated at round 0 and the last round")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--budgets", type=float, nargs="+", default=[8.0], metavar="MB")
    add_run_arguments(parser, max_wait=120.0)
    args = parser.parse_args()
    if not 0 < args.trained <= args.clients or not 0 < args.evaluated <= args.clients:
        parser.error("--trained and --evaluated must be between 1 and --clients")
    signal.signal(signal.SIGTERM, _interrupt)  # so that the runs are stopped on kill as on Ctrl-C
    load = os.getloadavg()[0]
    runs: list[tuple[float | None, RunResult]] = [(None, run_with(None, args))]
    runs += [(budget, run_with(budget, args)) for budget in args.budgets]
    base = runs[0][1]
    lines = [
        "| `state_memory_mb` | load at start | driver peak (MiB) | driver peak / no budget | private state on disk (MiB) "
        "| training-only rounds 2.. (s, median) | whole run (s) | whole run / no budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget, r in runs:
        train_only = r.train_only()
        lines.append(
            f"| {'none' if budget is None else f'{budget:g}'} | {r.load_at_start:.1f} | {r.sampled.driver_hwm / MIB:.0f} | "
            f"{r.sampled.driver_hwm / base.sampled.driver_hwm:.2f}x | {r.client_state_bytes / MIB:.1f} | "
            f"{'–' if train_only is None else f'{train_only:.2f}'} | {r.wall:.1f} | {r.wall / base.wall:.2f}x |"
        )
    command = (
        f"python benchmarks/state_budget.py --clients {args.clients} --trained {args.trained} --evaluated "
        f"{args.evaluated} --rounds {args.rounds} --budgets {' '.join(f'{b:g}' for b in args.budgets)}"
    )
    text = "\n".join(
        [
            f"Command: `{command}`. Each run: `simulate.py` on the direct engine with the default model, {args.clients:,} "
            f"clients, {args.trained:,} trained per round, {args.evaluated} evaluated at round 0 and in the last round, "
            f"{args.rounds} rounds, checkpoints every round. Machine: {machine_info()}; 1-minute load average "
            f"{load:.1f} before the runs.",
            "",
            *lines,
            "",
            "Driver peak: `VmHWM` of simulate.py, the process that holds every node's Flower `Context` (and in it the "
            "private state of each client that has trained). With a budget, the private states of the nodes used longest ago "
            "are dropped from their contexts past it and their clients read their state back from `client_state/` (written after every round they "
            "train either way); the results are the same (`tests/test_state_budget.py`).",
        ]
    )
    print(text)
    if not args.no_write:
        write_section(
            "state_budget", f"## Private state under a memory budget (`benchmarks/state_budget.py`)\n\n{text}"
        )


if __name__ == "__main__":
    main()
