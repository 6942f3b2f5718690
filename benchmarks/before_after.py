"""Start-up and round time of this tree against an earlier revision, measured in one run.

    .venv/bin/python benchmarks/before_after.py --before <rev> [--repeats 3] [--write]

Checks out ``<rev>`` in a temporary git worktree and runs ``simulate.py`` of both trees, alternating
(before, after, before, after, ...) so that both see the same machine load, with the same config and
the same interpreter: the default experiment (direct engine) and the same with Flower's engine.
Per run: **start-up**, the seconds from the process start to the start of round 1 (Python imports,
config, Ray and the workers, data, round 0's evaluation), and the **steady round**, the median of
``server.jsonl``'s round seconds from round 3 on. Reported: the median over repeats of each, and the
ratio after / before. With ``--write``, the table goes to BENCHMARKS.md (section ``before_after``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_info, write_section  # noqa: E402
from fedmtl.runtime.offline import OFFLINE_ENV  # noqa: E402

SETTINGS = {
    "default (direct engine)": ("rounds=10",),
    "default, Flower's engine": ("rounds=10", "simulation.engine=flower"),
}


def one_run(tree: Path, overrides: tuple[str, ...], out: Path) -> tuple[float, float]:
    """(start-up seconds, steady round seconds) of ``tree``'s simulate.py."""
    args = [
        sys.executable,
        str(tree / "simulate.py"),
        "--set",
        f"output.run_dir={out}",
        "--set",
        "output.progress=false",
    ]
    for override in overrides:
        args += ["--set", override]
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(tree)}
    started = time.time()
    result = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"{tree}: simulate.py failed\n{result.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "server.jsonl").read_text().splitlines() if line.strip()]
    return rows[0]["started_at"] - started, statistics.median(r["seconds"] for r in rows[2:])


def measure(before: Path, repeats: int) -> dict[str, dict[str, list[tuple[float, float]]]]:
    results: dict[str, dict[str, list[tuple[float, float]]]] = {name: {"before": [], "after": []} for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            for name, overrides in SETTINGS.items():
                for side, tree in (("before", before), ("after", ROOT)):
                    out = Path(tmp) / f"{side}-{repeat}-{len(results[name][side])}-{abs(hash(name))}"
                    results[name][side].append(one_run(tree, overrides, out))
                    print(
                        f"{name:28s} {side:6s} start-up {results[name][side][-1][0]:6.2f} s, round {results[name][side][-1][1]:.3f} s",
                        flush=True,
                    )
    return results


def table(results: dict[str, dict[str, list[tuple[float, float]]]], revision: str, repeats: int) -> str:
    lines = [
        f"Machine: {machine_info()}. Before: `{revision}`; after: this tree. {repeats} runs of each side, "
        "alternating; medians; ratio = after / before (below 1: faster).",
        "",
        "| setting | start-up before (s) | start-up after (s) | ratio | round before (s) | round after (s) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sides in results.items():
        start = {side: statistics.median(s for s, _ in runs) for side, runs in sides.items()}
        rnd = {side: statistics.median(r for _, r in runs) for side, runs in sides.items()}
        lines.append(
            f"| {name} | {start['before']:.2f} | {start['after']:.2f} | {start['after'] / start['before']:.2f} | "
            f"{rnd['before']:.3f} | {rnd['after']:.3f} | {rnd['after'] / rnd['before']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the table to BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before], check=True)
        try:
            text = table(measure(before, args.repeats), args.before, args.repeats)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    print(text)
    if args.write:
        write_section(
            "before_after", "## Round driver redesign: before and after (`benchmarks/before_after.py`)\n\n" + text
        )


if __name__ == "__main__":
    main()
