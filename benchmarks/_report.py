"""Shared by the benchmark scripts: machine description and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import time
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
