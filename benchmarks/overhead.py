"""What the simulation engines cost: each engine against a plain in-process PyTorch loop, in one run.

Every side does the same work: the same clients (``fedmtl.local.client.LocalClient``), the same local
steps and model, FedAvg through the same ``ServerUpdater``, and evaluation after every round.
The in-process loop runs the clients one after another in this process, without Flower or Ray.
Engines: ``direct`` started cold (its own Ray), ``direct`` attached to a Ray cluster that is
already running (``resources.ray_address``), and Flower's own ``run_simulation`` (``flower``).
Three workloads: the default config (a 2,640-parameter MLP encoder), a CNN encoder of about 1e6
parameters on the digits suite, and ``configs/fedhca2_small.yaml`` (a ResNet-18 encoder over four
per-pixel tasks on the shapes suite).

    python benchmarks/overhead.py [--rounds 10] [--workload default|cnn|resnet18|many ...] [--no-write]

Prints start-up seconds, steady-state seconds per round (median over rounds >= 2) and ratios to
the plain loop, and the floor that the engines' workers (one per core) cannot beat, computed from the plain
loop's own per-client times; writes them to BENCHMARKS.md. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmtl.runtime.offline import set_offline_env  # noqa: E402

set_offline_env()

from benchmarks._report import machine_info, write_section  # noqa: E402
from fedmtl.config.engines import ENGINE_KINDS  # noqa: E402
from fedmtl.config.experiment import ExperimentConfig  # noqa: E402
from fedmtl.config.loading import load_config  # noqa: E402
from fedmtl.core.files import read_rows  # noqa: E402
from fedmtl.core.layout import SERVER_FILE  # noqa: E402
from fedmtl.federation.algorithm import ServerAlgorithm  # noqa: E402
from fedmtl.local.client import LocalClient  # noqa: E402
from fedmtl.model.networks import initial_shared_state  # noqa: E402
from fedmtl.runtime.resources import private_ray_cluster  # noqa: E402

WORKERS = os.cpu_count() or 1  # the engines' workers: one per core (resources.client_cpus = 1)


def time_inprocess(cfg: ExperimentConfig) -> tuple[float, list[float], list[float]]:
    """Start-up seconds (data + round-0 eval), per-round seconds of a sequential plain loop, and per round the
    :func:`parallel_bound` of its own per-client times."""
    t0 = time.perf_counter()
    updater = ServerAlgorithm(cfg).cohorts[0].updater  # the server's own encoder, aggregator and optimizer
    clients = [LocalClient.for_client(cfg, c) for c in range(cfg.clients.count)]
    private: dict[int, dict | None] = dict.fromkeys(range(cfg.clients.count))
    for client in clients:
        client.evaluate(updater.global_state(), None)
    startup = time.perf_counter() - t0
    rounds, bounds = [], []
    for server_round in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        shared = updater.global_state()
        outcomes, trained = [], []
        for client in clients:
            outcomes.append(client.train(shared, private[client.client_id], server_round))
            trained.append(time.perf_counter())
        for client, outcome in zip(clients, outcomes):
            private[client.client_id] = outcome.private
        stepped = time.perf_counter()
        updater.step(
            [c.client_id for c in clients], [o.shared for o in outcomes], [o.metrics["num-examples"] for o in outcomes]
        )
        evaluated = [time.perf_counter()]
        for client in clients:
            client.evaluate(updater.global_state(), private[client.client_id])
            evaluated.append(time.perf_counter())
        rounds.append(evaluated[-1] - start)
        train_times = [b - a for a, b in zip([start, *trained], trained)]
        eval_times = [b - a for a, b in zip(evaluated, evaluated[1:])]
        bounds.append(parallel_bound(train_times) + (evaluated[0] - stepped) + parallel_bound(eval_times))
    return startup, rounds, bounds


def parallel_bound(seconds: list[float], workers: int = WORKERS) -> float:
    """No schedule of these client times over ``workers`` workers ends sooner: the larger of their sum / workers
    and the longest one (a lower bound; the best schedule may take a little longer)."""
    return max(sum(seconds) / workers, max(seconds, default=0.0))


def concurrent_slowdown(cfg: ExperimentConfig, seconds: float = 4.0) -> float:
    """How much longer one client's training takes while :data:`WORKERS` processes train at once than while
    one does (median per call over ``seconds`` of training): what the machine's shared cores, caches and
    memory cost the engines' workers, which the plain loop does not pay."""
    alone = statistics.median(train_in_processes(cfg, 1, seconds))
    return statistics.median(train_in_processes(cfg, WORKERS, seconds)) / alone


def train_in_processes(cfg: ExperimentConfig, processes: int, seconds: float) -> list[float]:
    """Seconds of every training call made by ``processes`` fresh processes that train together for ``seconds``."""
    context = multiprocessing.get_context("spawn")
    start, found = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=train_repeatedly, args=(cfg, i % cfg.clients.count, seconds, start, found))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    calls = [call for _ in workers for call in found.get(timeout=600)]
    for worker in workers:
        worker.join()
    return calls


def train_repeatedly(cfg: ExperimentConfig, client_id: int, seconds: float, start: Any, found: Any) -> None:
    client = LocalClient.for_client(cfg, client_id)
    shared = ServerAlgorithm(cfg).cohorts[0].updater.global_state()
    client.train(shared, None, 1)  # data made, first-call costs paid
    start.wait()
    calls: list[float] = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        called = time.perf_counter()
        client.train(shared, None, 2)
        calls.append(time.perf_counter() - called)
    found.put(calls)


def time_simulation(cfg: ExperimentConfig) -> tuple[float, list[float]]:
    """Start-up seconds (until round 1 starts: Ray, workers, round-0 eval) and per-round seconds."""
    import simulate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(cfg, output=replace(cfg.output, run_dir=f"{tmp}/run", progress=False))
        t0 = time.time()
        with contextlib.redirect_stdout(io.StringIO()):
            status = simulate.run(cfg)
        if status != 0:
            raise SystemExit("simulation failed")
        rows = read_rows(Path(tmp) / "run" / SERVER_FILE)
    return rows[0]["started_at"] - t0, [row["seconds"] for row in rows]


def steady(rounds: list[float]) -> float:
    return statistics.median(rounds[1:] if len(rounds) > 1 else rounds)


CONFIG_FILES = {"resnet18": "configs/fedhca2_small.yaml"}  # workloads that start from a config file
WORKLOADS = {
    "default": [],
    "resnet18": ["eval_every=1"],
    # about 1e6 encoder parameters: two 3x3 conv blocks (192, 512 channels) on the 8x8 digits
    "cnn": [
        "data.name=digits",
        "clients.count=6",
        "clients.tasks=[[digit,parity],[digit,geq5],[parity,loops],[digit,loops],[geq5,loops],[digit,parity]]",
        "model.encoder=cnn",
        "model.conv_channels=[192,512]",
        "model.representation_dim=64",
        "model.head_hidden=[]",
        "client.local_steps=5",
        "client.batch_size=16",
    ],
    # 1,000 clients a round, one local step each: the per-client cost of an engine (issue #25)
    "many": [
        "clients.count=1000",
        "clients.samples_per_task=32",
        "clients.eval_samples_per_task=32",
        "client.local_steps=1",
    ],
}
WITHOUT_FLOWER = {"many"}  # Flower's engine polls every node every 0.1 s: O(N x messages) a pass at N = 1,000


def encoder_parameters(cfg: ExperimentConfig) -> int:
    return sum(
        v.numel()
        for v in initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape()).values()
    )


def measure(
    cfg: ExperimentConfig, flower: bool = True
) -> tuple[list[tuple[str, float, list[float]]], list[float], float]:
    """(side, start-up s, per-round s) for the plain loop and every engine (Flower's with ``flower``),
    one after another; the plain loop's per-round :func:`parallel_bound`; the :func:`concurrent_slowdown`."""
    startup, rounds, bounds = time_inprocess(cfg)
    sides = [("plain in-process PyTorch loop", startup, rounds)]
    sides.append(("`direct` engine, cold (starts Ray)", *time_simulation(with_engine(cfg, "direct"))))
    with private_ray_cluster(cfg.resources) as address:
        attached = replace(cfg.resources, ray_address=address, num_cpus=None, num_gpus=None)
        sides.append(
            (
                "`direct` engine, attached to running Ray",
                *time_simulation(replace(with_engine(cfg, "direct"), resources=attached)),
            )
        )
    if flower:
        sides.append(("`flower` engine (Flower's run_simulation), cold", *time_simulation(with_engine(cfg, "flower"))))
    return sides, bounds, concurrent_slowdown(cfg)


def with_engine(cfg: ExperimentConfig, engine: str) -> ExperimentConfig:
    return replace(cfg, simulation=replace(cfg.simulation, engine=ENGINE_KINDS[engine]()))


def table(
    name: str, cfg: ExperimentConfig, sides: list[tuple[str, float, list[float]]], bounds: list[float], slowdown: float
) -> str:
    _, plain_startup, plain_rounds = sides[0]
    plain_round = steady(plain_rounds)
    bound = steady([b / r for b, r in zip(bounds, plain_rounds)])
    lines = [
        f"**{name}**: {cfg.data.name} suite, {cfg.clients.count} clients, {cfg.model.encoder} encoder of "
        f"{encoder_parameters(cfg):,} parameters, {cfg.client.local_steps} local steps of batch {cfg.client.batch_size}, "
        f"{cfg.rounds} rounds, evaluation every round.",
        "",
        "| | start-up (s) | start-up - plain (s) | steady-state s/round | round / plain round | total (s) |",
        "|---|---|---|---|---|---|",
    ]
    for side, startup, rounds in sides:
        lines.append(
            f"| {side} | {startup:.2f} | {startup - plain_startup:+.2f} | {steady(rounds):.3f} | {steady(rounds) / plain_round:.2f}x | {startup + sum(rounds):.1f} |"
        )
    lines += [
        "",
        f"The floor for {WORKERS} workers, from the plain loop's own per-client times: **{bound:.2f}x** of its round "
        "(median over rounds 2..; per round, training's and evaluation's `parallel_bound`, plus the server's step). "
        f"One client's training takes **{slowdown:.2f}x** as long while {WORKERS} processes train at once as while one "
        "does (`concurrent_slowdown`; the engines' workers share the machine so, the plain loop does not).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), nargs="+", default=["default", "cnn"])
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="applied to every workload"
    )
    parser.add_argument("--section", default="overhead", help="BENCHMARKS.md section to write (e.g. overhead_gpu)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    tables = []
    for name in args.workload:
        config_file = CONFIG_FILES.get(name)
        path = Path(__file__).resolve().parents[1] / config_file if config_file else None
        cfg = load_config(path, [f"rounds={args.rounds}", *WORKLOADS[name], *args.set])
        tables.append(table(name, cfg, *measure(cfg, flower=name not in WITHOUT_FLOWER)))
        print(tables[-1], flush=True)
    text = "\n\n".join(
        [
            f"Command: `python benchmarks/overhead.py --rounds {args.rounds} --workload {' '.join(args.workload)}"
            + "".join(f" --set {o}" for o in args.set)
            + (f" --section {args.section}" if args.section != "overhead" else "")
            + f"`. Measured in one run on: {machine_info('cuda')}; "
            f"1-minute load average before the run: {load:.1f}.",
            *tables,
            "Start-up: from calling `simulate.run` to the start of round 1 (for the engines: Ray start or attach, worker "
            "start-up with torch imported, round-0 evaluation); for the plain loop, data generation and round-0 evaluation. "
            "Steady state: median wall time of rounds 2.., each covering training, aggregation and evaluation. "
            "The engines run two workers (one per core) while the plain loop runs the clients one after another in one process.",
        ]
    )
    if not args.no_write:
        title = "Simulation overhead" + (" on a GPU" if "gpu" in args.section else "")
        if args.workload != ["default", "cnn"]:
            title += f": {', '.join(args.workload)}"
        write_section(args.section, f"## {title} (`benchmarks/overhead.py`)\n\n" + text)


if __name__ == "__main__":
    main()
