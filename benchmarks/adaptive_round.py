"""What avoiding negative transfer costs per round: FedAvg against grouping with task affinity, client
affinity (server.client_affinity_every), and the whole adaptive arm (grouping, affinity and per-client
roll-back), in one run.

    .venv/bin/python benchmarks/adaptive_round.py [--repeats 3] [--write]

Runs ``simulate.py`` on the default experiment (8 clients, direct engine) with the same clients, seed
and rounds for each setting, alternating settings within each repeat so that all see the same machine
load. Per run: the **steady round**, the median of ``server.jsonl``'s round seconds (training,
aggregation, regrouping and evaluation) from round 5 on, after the groups have formed (warm-up 3
rounds). Reported: the median over repeats and the ratio to FedAvg. The goal of issue #29 is at most
1.5x FedAvg for grouping with affinity. With ``--write`` the table goes to BENCHMARKS.md (section
``adaptive_round``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_info, write_section  # noqa: E402
from fedmtl.runtime.offline import OFFLINE_ENV  # noqa: E402

COMMON = ("rounds=10", "eval_every=1")
GROUPING = "server.grouping={name: affinity, signal: updates, warmup_rounds: 3}"
SETTINGS = {
    "FedAvg": (),
    "grouping + task affinity (every 5 steps)": (GROUPING, "client.affinity_every=5"),
    "grouping + task affinity (every step)": (GROUPING, "client.affinity_every=1"),
    "client affinity (every round: the group's 8 encoders in each message)": ("server.client_affinity_every=1",),
    "grouping on client affinity (every round)": (
        "server.grouping={name: affinity, signal: clients, warmup_rounds: 3}",
        "server.client_affinity_every=1",
    ),
    "adaptive_rollback (+ roll-back: a local model trained beside)": (
        GROUPING,
        "client.affinity_every=5",
        "client.rollback={validation_fraction: 0.2}",
    ),
}


def steady_round(overrides: tuple[str, ...], out: Path) -> tuple[float, int]:
    """(median round seconds from round 5 on, groups after the last round)."""
    args = [
        sys.executable,
        str(ROOT / "simulate.py"),
        "--set",
        f"output.run_dir={out}",
        "--set",
        "output.progress=false",
    ]
    for override in (*COMMON, *overrides):
        args += ["--set", override]
    result = subprocess.run(
        args, cwd=ROOT, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise SystemExit(f"simulate.py failed\n{result.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "server.jsonl").read_text().splitlines() if line.strip()]
    groups = len(rows[-1].get("groups") or {"all": []})
    return statistics.median(r["seconds"] for r in rows[4:]), groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the table to BENCHMARKS.md")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for i, (name, overrides) in enumerate(SETTINGS.items()):
                results[name].append(steady_round(overrides, Path(tmp) / f"{repeat}-{i}"))
                seconds, groups = results[name][-1]
                print(f"{name:58s} round {seconds:.3f} s, {groups} group(s)", flush=True)
    base = statistics.median(s for s, _ in results["FedAvg"])
    lines = [
        f"Machine: {machine_info()}. Default experiment (8 clients, direct engine), 10 rounds, evaluation every "
        f"round; steady round = median round seconds from round 5 on; {args.repeats} runs of each setting, "
        "alternating; medians; ratio to FedAvg.",
        "",
        "| setting | round (s) | ratio to FedAvg | groups formed |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        formed = "/".join(str(g) for _, g in runs)
        lines.append(f"| {name} | {seconds:.3f} | {seconds / base:.2f} | {formed} |")
    lines += [
        "",
        "The adaptive arm probes affinity every 5 steps (the second row); the goal of issue #29 is at most 1.5x "
        "FedAvg. Groups formed: per run; on the default experiment the summed-updates rule keeps one group, so a "
        "round pays the warm-up's summed updates and the clustering, not a second encoder's aggregation (a small "
        "part of a round next to training). Client affinity sends each client its group's trained encoders and "
        "evaluates each on its own data; grouped on it, the default experiment splits in two, after which each "
        "client probes only its own group's members (hence the lower ratio than probing all eight).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(
            "adaptive_round", "## Adaptive federation: the cost of a round (`benchmarks/adaptive_round.py`)\n\n" + text
        )


if __name__ == "__main__":
    main()
