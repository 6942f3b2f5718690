"""Shared by the benchmark scripts: machine description and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nFigures written by the scripts in `benchmarks/`; each section names the machine it ran on.\n"


def machine_info(device: str = "cpu") -> str:
    parts = [
        f"{platform.system()} {platform.machine()}",
        f"{os.cpu_count()} CPUs",
        f"Python {platform.python_version()}",
        f"torch {torch.__version__}",
    ]
    if device == "cuda" and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    parts.append(time.strftime("%Y-%m-%d"))
    return ", ".join(parts)


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def alternating_times(
    calls: Mapping[str, Callable[[], object]], repeats: int, warm_up: bool = True
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls of each, the calls alternating round by round so that the machine's
    noise hits all alike; with ``warm_up``, one untimed call of each first."""
    if warm_up:
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times
