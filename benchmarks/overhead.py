"""What Flower + Ray cost: a default-size simulation against a plain in-process PyTorch loop.

Both sides do the same work: the same clients (``fedmtl.client.LocalClient``), the same local
steps and model, FedAvg through the same ``ServerUpdater``, and evaluation after every round.
The in-process loop runs the clients one after another in this process, without Flower or Ray.

    python benchmarks/overhead.py [--rounds 15] [--set key.path=value ...] [--no-write]

Prints start-up seconds, steady-state seconds per round (median over rounds >= 2) for both,
and their ratio; writes them to BENCHMARKS.md. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmtl.offline import set_offline_env  # noqa: E402

set_offline_env()

from benchmarks._report import machine_info, write_section  # noqa: E402
from fedmtl.client import LocalClient  # noqa: E402
from fedmtl.config import ExperimentConfig, load_config  # noqa: E402
from fedmtl.models import initial_shared_state  # noqa: E402
from fedmtl.rundir import SERVER_FILE, read_rows  # noqa: E402
from fedmtl.server_update import ServerUpdater  # noqa: E402


def time_inprocess(cfg: ExperimentConfig) -> tuple[float, list[float]]:
    """Start-up seconds (data + round-0 eval) and per-round seconds of a sequential plain loop."""
    t0 = time.perf_counter()
    updater = ServerUpdater(initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape()), cfg.server.aggregator, cfg.server.optimizer, cfg.seed)
    clients = [LocalClient(cfg, c) for c in range(cfg.clients.count)]
    private: dict[int, dict | None] = dict.fromkeys(range(cfg.clients.count))
    for client in clients:
        client.evaluate(updater.global_state(), None)
    startup = time.perf_counter() - t0
    rounds = []
    for server_round in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        shared = updater.global_state()
        outcomes = [client.train(shared, private[client.client_id], server_round) for client in clients]
        for client, outcome in zip(clients, outcomes):
            private[client.client_id] = outcome.private
        updater.step(
            [c.client_id for c in clients], [o.shared for o in outcomes], [o.metrics["num-examples"] for o in outcomes]
        )
        for client in clients:
            client.evaluate(updater.global_state(), private[client.client_id])
        rounds.append(time.perf_counter() - start)
    return startup, rounds


def time_simulation(cfg: ExperimentConfig) -> tuple[float, list[float]]:
    """Start-up seconds (until round 1 starts: Ray, workers, round-0 eval) and per-round seconds."""
    import simulate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(cfg, output=replace(cfg.output, run_dir=f"{tmp}/run", progress=False))
        t0 = time.time()
        if simulate.run(cfg) != 0:
            raise SystemExit("simulation failed")
        rows = read_rows(Path(tmp) / "run" / SERVER_FILE)
    return rows[0]["started_at"] - t0, [row["seconds"] for row in rows]


def steady(rounds: list[float]) -> float:
    return statistics.median(rounds[1:] if len(rounds) > 1 else rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    cfg = load_config(None, [f"rounds={args.rounds}", *args.set])

    plain_startup, plain_rounds = time_inprocess(cfg)
    sim_startup, sim_rounds = time_simulation(cfg)
    plain_round, sim_round = steady(plain_rounds), steady(sim_rounds)
    lines = [
        f"Default config ({cfg.clients.count} clients, {cfg.client.local_steps} local steps, {cfg.rounds} rounds, "
        f"evaluation every round), measured in one run on: {machine_info()}.",
        "",
        "| | start-up (s) | steady-state s/round | total (s) |",
        "|---|---|---|---|",
        f"| plain in-process PyTorch loop | {plain_startup:.2f} | {plain_round:.3f} | {plain_startup + sum(plain_rounds):.1f} |",
        f"| Flower simulation + Ray | {sim_startup:.2f} | {sim_round:.3f} | {sim_startup + sum(sim_rounds):.1f} |",
        f"| ratio (Flower / plain) | {sim_startup / plain_startup:.1f}x | {sim_round / plain_round:.2f}x | |",
        "",
        "Start-up: for Flower, from calling `simulate.run` to the start of round 1 (Ray start, worker start-up, "
        "clients importing torch, round-0 evaluation); for the plain loop, data generation and round-0 evaluation. "
        "Steady state: median wall time of rounds 2.., each covering training, aggregation and evaluation.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("overhead", "## Simulation overhead (`benchmarks/overhead.py`)\n\n" + text)


if __name__ == "__main__":
    main()
