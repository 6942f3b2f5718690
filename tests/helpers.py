"""Helpers shared by the tests: tiny configs, simulate.py as a subprocess, and finding (and
stopping) every process a test started, by the tag its environment carries."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from fedmtl.runtime.offline import OFFLINE_ENV

ROOT = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = (
    "clients.count=3",
    "clients.samples_per_task=32",
    "clients.eval_samples_per_task=32",
    "client.local_steps=2",
    "client.batch_size=16",
    "model.encoder_hidden=[8]",
    "model.representation_dim=4",
    "model.head_hidden=[]",
)


IN_PROCESS = "simulation.engine=inprocess"  # for end-to-end runs whose subject is not Ray (CI time)

# (client, task) pairs of the tiny config: client c holds tasks c and c + 1 of the four (wrapping)
TINY_CLIENT_TASKS = {
    (0, "anchor"),
    (0, "aligned"),
    (1, "aligned"),
    (1, "orthogonal"),
    (2, "orthogonal"),
    (2, "opposed"),
}


def tiny_overrides(clients: int) -> tuple[str, ...]:
    """The tiny config with another client count."""
    return (*(o for o in TINY_OVERRIDES if not o.startswith("clients.count=")), f"clients.count={clients}")


def set_args(overrides) -> list[str]:
    """``["--set", o1, "--set", o2, ...]``: overrides as simulate.py arguments."""
    return [arg for o in overrides for arg in ("--set", o)]


TAG_VAR = "FEDMTL_TEST_TAG"  # every process a test starts inherits it: leftovers are found by tag


def tagged_processes(tag: str) -> set[int]:
    """Live processes whose environment carries ``TAG_VAR=tag`` (zombies have none)."""
    marker = f"{TAG_VAR}={tag}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.add(int(entry))
    return found


def tagged_env(flwr_home) -> dict[str, str]:
    """Environment for simulate.py subprocesses: offline, its own Flower home, a unique tag."""
    return dict(
        os.environ, **OFFLINE_ENV, FLWR_HOME=str(flwr_home), PYTHONUNBUFFERED="1", **{TAG_VAR: uuid.uuid4().hex}
    )


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return ""


def stop_tagged(tag: str, grace_s: float = 20.0, reap: Callable[[], None] = lambda: None) -> list[str]:
    """SIGTERM every process carrying ``tag`` (also those that appear meanwhile); SIGKILL what is
    left after ``grace_s``. Returns the processes that needed SIGKILL; raises if any survive it."""
    deadline, signalled, forced = time.monotonic() + grace_s, set(), []
    while (alive := tagged_processes(tag)) and time.monotonic() < deadline:
        for pid in alive - signalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        signalled |= alive
        reap()
        time.sleep(0.2)
    if alive:
        forced = [f"{pid}: {cmdline(pid)[:160]}" for pid in alive]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (alive := tagged_processes(tag)) and time.monotonic() < deadline:
            reap()
            time.sleep(0.2)
    reap()
    assert not alive, f"processes survived SIGKILL: {[cmdline(pid)[:160] for pid in alive]}"
    return forced


def simulate(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "simulate.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def assert_no_leftover_processes(env: dict, grace_s: float = 20.0) -> None:
    """No process started with ``env`` (found by its tag: Ray and Flower pass it on) is alive."""
    deadline = time.monotonic() + grace_s
    while (left := tagged_processes(env[TAG_VAR])) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes outlived simulate.py: {sorted(left)}"


RAY_PRIVATE_ENV = {"RAY_ADDRESS": "local"}  # OFFLINE_ENV already keeps Ray on loopback


def federate_in_process(cfg) -> None:
    """A study's ``federate``: the run ``cfg`` describes, on the in-process engine (no Ray), quietly."""
    from server.simulation import federate_in_process as quietly_in_process

    quietly_in_process(cfg)
