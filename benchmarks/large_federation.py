"""The large federation of issue #25: 100,000 clients, 1,000 trained a round for 100 rounds, under a
private-state memory budget, and a run killed half-way and resumed against one never interrupted.

    python benchmarks/large_federation.py [--clients 100000] [--trained 1000] [--rounds 100] [--budget 64]
        [--kill-after 50] [--no-write]

Runs ``simulate.py`` on the direct engine twice with the same settings (checkpoints every round):
once straight through, and once SIGKILLed (the whole process group: a crash, not a shutdown) as soon
as round ``--kill-after`` is in its ``server.jsonl``, then continued with ``simulate.py --resume``. The
two finished runs are compared: every row of ``metrics.jsonl`` and ``server.jsonl`` (its timings
left out) and the final ``encoder.pt``, which must be equal bit for bit. Reported: wall time, the
driver's peak memory (``VmHWM``) and the process tree's peak, the private state on disk. Writes
BENCHMARKS.md's ``large_federation`` section; exits non-zero when the runs differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_info, write_section  # noqa: E402
from benchmarks.scale import (  # noqa: E402
    MIB,
    Sampled,
    _interrupt,
    add_run_arguments,
    launched,
    sample_once,
    wait_for_quiet,
)
from fedmtl.core.files import read_rows  # noqa: E402
from fedmtl.core.layout import SERVER_FILE  # noqa: E402
from fedmtl.runfiles.rundir import RunDirectory  # noqa: E402

TIMING_FIELDS = ("seconds", "started_at", "timings")  # server.jsonl fields that measure time, not results


@dataclass
class Leg:
    """One process: simulate.py from the start, or its continuation."""

    wall: float
    sampled: Sampled
    killed: bool


def run_leg(command: list[str], run_dir: Path, log: Path, args: argparse.Namespace, kill_after: int | None) -> Leg:
    """Run ``command`` to its end, sampling memory; SIGKILL its process group once ``kill_after`` rounds are written."""
    server_file = run_dir / SERVER_FILE
    start = time.monotonic()
    killed = False
    with launched(command, log) as (proc, sampled):
        while proc.poll() is None:
            tick = time.monotonic()
            if tick - start > args.timeout:
                raise SystemExit(f"simulate.py ran past --timeout {args.timeout:g} s; stopped (log: {log})")
            sample_once(proc.pid, sampled, start)
            if kill_after is not None and rounds_written(server_file) >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
                break
            time.sleep(max(0.0, args.interval - (time.monotonic() - tick)))
    wall = time.monotonic() - start
    if not killed and proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"simulate.py exited with {proc.returncode}:\n{tail}")
    return Leg(wall, sampled, killed)


def rounds_written(server_file: Path) -> int:
    """Rows of ``server.jsonl`` written completely so far (the server may be writing the next one)."""
    if not server_file.exists():
        return 0
    return server_file.read_bytes().count(b"\n")


def settings(args: argparse.Namespace, run_dir: Path) -> list[str]:
    command = [sys.executable, "simulate.py"]
    for setting in (
        f"clients.count={args.clients}", f"server.fraction_fit={args.trained / args.clients}",
        f"server.fraction_evaluate={args.evaluated / args.clients}", f"rounds={args.rounds}",
        f"eval_every={args.rounds}", "checkpoint.every=1", "simulation.engine=direct",
        f"simulation.engine.state_memory_mb={args.budget}", f"output.run_dir={run_dir}", *args.set,
    ):  # fmt: skip
        command += ["--set", setting]
    return command


def results(run_dir: Path) -> tuple[list[dict], list[dict], dict[str, torch.Tensor]]:
    directory = RunDirectory(run_dir)
    server = [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in read_rows(run_dir / SERVER_FILE)]
    return read_rows(directory.metrics_path), server, torch.load(run_dir / "encoder.pt", weights_only=True)


def differences(ours: Path, theirs: Path) -> list[str]:
    (m1, s1, e1), (m2, s2, e2) = results(ours), results(theirs)
    found = []
    if m1 != m2:
        first = next((i for i, (a, b) in enumerate(zip(m1, m2)) if a != b), min(len(m1), len(m2)))
        found.append(f"metrics.jsonl differs from row {first} ({len(m1)} and {len(m2)} rows)")
    if s1 != s2:
        first = next((i for i, (a, b) in enumerate(zip(s1, s2)) if a != b), min(len(s1), len(s2)))
        found.append(f"server.jsonl differs from round row {first} ({len(s1)} and {len(s2)} rows)")
    if e1.keys() != e2.keys() or not all(torch.equal(e1[k], e2[k]) for k in e1):
        found.append("encoder.pt differs")
    return found


def state_on_disk(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in (run_dir / "client_state").rglob("*.pt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--trained", type=int, default=1_000, help="clients trained per round")
    parser.add_argument("--evaluated", type=int, default=100, help="clients evaluated at round 0 and the last round")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--budget", type=float, default=64.0, help="simulation.engine.state_memory_mb (MB)")
    parser.add_argument("--kill-after", type=int, default=50, help="kill the second run once this round is written")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep both run directories there")
    add_run_arguments(parser, max_wait=120.0)
    parser.set_defaults(interval=0.5, timeout=3600.0)  # each process runs for minutes
    args = parser.parse_args()
    if not 0 < args.trained <= args.clients or not 0 < args.evaluated <= args.clients:
        parser.error("--trained and --evaluated must be between 1 and --clients")
    if not 0 < args.kill_after < args.rounds:
        parser.error("--kill-after must be between 1 and --rounds - 1")
    signal.signal(signal.SIGTERM, _interrupt)
    load = wait_for_quiet(args.max_load, args.max_wait)
    root = Path(args.keep or tempfile.mkdtemp(prefix="fedmtl-large-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        straight_dir, resumed_dir = root / "straight", root / "resumed"
        if straight_dir.exists() or resumed_dir.exists():
            raise SystemExit(f"--keep {root}: holds runs already; name an empty directory")
        print(
            f"large federation: {args.clients:,} clients, {args.trained:,} a round, {args.rounds} rounds ...",
            flush=True,
        )
        straight = run_leg(settings(args, straight_dir), straight_dir, root / "straight.log", args, None)
        print(f"  straight through: {straight.wall:.0f} s", flush=True)
        first = run_leg(settings(args, resumed_dir), resumed_dir, root / "first.log", args, args.kill_after)
        if not first.killed:
            raise SystemExit(f"the second run ended before round {args.kill_after} was written")
        killed_at = rounds_written(resumed_dir / SERVER_FILE)
        print(f"  killed after round {killed_at}: {first.wall:.0f} s", flush=True)
        command = [sys.executable, "simulate.py", "--resume", str(resumed_dir)]
        second = run_leg(command, resumed_dir, root / "resumed.log", args, None)
        print(f"  resumed: {second.wall:.0f} s", flush=True)
        found = differences(straight_dir, resumed_dir)
        disk = state_on_disk(straight_dir)
        rejected = sum(len(row.get("rejected") or []) for row in read_rows(straight_dir / SERVER_FILE))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    verdict = (
        "equal bit for bit (metrics.jsonl, server.jsonl without timings, encoder.pt)" if not found else "; ".join(found)
    )
    rows = [
        "| run | wall (s) | driver peak (MiB) | process tree peak RSS (MiB) |",
        "|---|---:|---:|---:|",
        f"| straight through | {straight.wall:.0f} | {straight.sampled.driver_hwm / MIB:.0f} | "
        f"{straight.sampled.peak_rss / MIB:.0f} |",
        f"| killed after round {killed_at} | {first.wall:.0f} | {first.sampled.driver_hwm / MIB:.0f} | "
        f"{first.sampled.peak_rss / MIB:.0f} |",
        f"| resumed to round {args.rounds} | {second.wall:.0f} | {second.sampled.driver_hwm / MIB:.0f} | "
        f"{second.sampled.peak_rss / MIB:.0f} |",
    ]
    command_line = (
        f"python benchmarks/large_federation.py --clients {args.clients} --trained {args.trained} --rounds "
        f"{args.rounds} --budget {args.budget:g} --kill-after {args.kill_after}"
        + "".join(f" --set {setting}" for setting in args.set)
    )
    text = "\n".join(
        [
            f"Command: `{command_line}`. `simulate.py` on the direct engine with the default model and data: {args.clients:,} "
            f"clients, {args.trained:,} trained a round for {args.rounds} rounds, {args.evaluated} evaluated at round 0 "
            f"and the last, checkpoints every round, `simulation.engine.state_memory_mb={args.budget:g}`. Machine: "
            f"{machine_info()}; 1-minute load average {load:.1f} before the runs.",
            "",
            *rows,
            "",
            f"Private state on disk at the end: {disk / MIB:.0f} MiB; updates rejected by the server over the run: "
            f"{rejected}. The run killed (SIGKILL to its process group) "
            f"and resumed with `simulate.py --resume` against the one never interrupted: **{verdict}**.",
        ]
    )
    print(text)
    if not args.no_write:
        write_section(
            "large_federation",
            f"## A large federation, killed and resumed (`benchmarks/large_federation.py`)\n\n{text}",
        )
    if found:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
