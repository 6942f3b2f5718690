"""Timestamps of a deployed round's steps, taken on fedmtl's own side, for ``benchmarks/deployment.py``.

Off unless ``FEDMTL_TIMELINE`` names a file: then the ServerApp (message sent, replies in) and every
ClientApp process (its start, the handler's start, training's start and end, the reply handed back,
a private state restored from the state directory) append one JSON line per step to that file. On one
machine (loopback) the processes share a wall clock, so the lines of one round line up into where its
seconds went; the deployment fault tests read the steps as events (when to kill a SuperNode, what a
restarted one restored). Nothing else reads the file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

TIMELINE_VAR = "FEDMTL_TIMELINE"


def enabled() -> bool:
    return bool(os.environ.get(TIMELINE_VAR))


def mark(step: str, **fields: Any) -> None:
    """Append ``{"step", "t" (wall seconds), "pid", **fields}`` to the timeline file, if one is set."""
    path = os.environ.get(TIMELINE_VAR)
    if not path:
        return
    line = json.dumps({"step": step, "t": time.time(), "pid": os.getpid(), **fields}) + "\n"
    with open(path, "a") as timeline:  # one short append per line: lines of concurrent processes stay whole
        timeline.write(line)


def process_started_at() -> float | None:
    """This process's start as wall seconds, to 10 ms (Linux: its age from ``/proc``), or None elsewhere."""
    try:
        since_boot = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return time.time() - (uptime - since_boot)
