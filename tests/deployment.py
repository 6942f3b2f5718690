"""Real Flower processes on loopback for the deployment tests: a SuperLink, SuperNodes and ``flwr run``
as separate processes, driven through the flwr CLI, with everything they spawn found by its tag and
stopped at the end (``tests/test_deployment.py``, ``tests/test_deployment_faults.py``)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from fedmtl.config.loading import load_config
from fedmtl.core.files import read_rows
from fedmtl.local.client import LocalClient
from tests.helpers import (
    RAY_PRIVATE_ENV,
    ROOT,
    TAG_VAR,
    cmdline,
    stop_tagged,
    tagged_env,
    tagged_processes,
    tiny_overrides,
)

VENV_BIN = Path(sys.executable).parent
# 2 clients, 2 rounds, the tiny model: client c holds tasks c and c+1 of the default suite. Evaluated at
# rounds 0 and 2 only: every message exchange costs a deployment tens of seconds.
TINY_2 = (
    *tiny_overrides(2),
    "rounds=2",
    "eval_every=2",
)
RUN_TIMEOUT_S = 400  # from launch; one deployment run takes 70-160 s on a busy 2-core machine
START_TIMEOUT_S = 90
# A private Ray instance on loopback: without RAY_ADDRESS=local, ray.init() joins the cluster that the
# last `ray start` on this machine recorded in /tmp/ray/ray_current_cluster (even a dead one: it then
# hangs or fails); Ray binds its servers to loopback only when it may not form a multi-node cluster.
# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def exposed_listeners(pids: Iterable[int]) -> set[str]:
    """TCP sockets of ``pids`` that listen beyond loopback, as 'address:port command'."""
    owner = {}  # socket inode -> pid
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if (link := os.readlink(fd)).startswith("socket:["):
                        owner[link[8:-1]] = pid
    exposed = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:] if table.exists() else []:
            local, state, inode = (fields := line.split())[1], fields[3], fields[9]
            if state == "0A" and inode in owner:  # 0A: LISTEN
                host, port = local.split(":")
                address = _address(host)
                mapped = getattr(address, "ipv4_mapped", None)
                if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
                    exposed.add(f"{address}:{int(port, 16)} {cmdline(owner[inode])[:80]}")
    return exposed


class Processes:
    """The processes of one test setup, and everything they spawn (found by their tag)."""

    def __init__(self, log_dir: Path) -> None:
        self.tag = uuid.uuid4().hex
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.started: dict[str, subprocess.Popen] = {}
        self.exposed: set[str] = set()  # non-loopback listeners seen while the setup ran

    def env(self, flwr_home: Path, **extra: str) -> dict[str, str]:
        env = {**tagged_env(flwr_home), **RAY_PRIVATE_ENV, **extra, TAG_VAR: self.tag}
        # flwr starts flower-superlink / flower-superexec / flwr-serverapp by name: they must be on PATH
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.pop("CUDA_VISIBLE_DEVICES", None)
        return env

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        assert env.get(TAG_VAR) == self.tag
        with open(self.log_dir / f"{name}.log", "w") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait(self, name: str, timeout: float) -> int | None:
        """Exit status of ``name``, or None if it still runs after ``timeout``; watches listeners meanwhile."""
        deadline = time.monotonic() + timeout
        while (code := self.started[name].poll()) is None and time.monotonic() < deadline:
            self.watch()
            time.sleep(1.0)
        return code

    def watch(self) -> None:
        self.exposed |= exposed_listeners(tagged_processes(self.tag))

    def stop(self) -> list[str]:
        def reap() -> None:
            for proc in self.started.values():
                proc.poll()

        return stop_tagged(self.tag, reap=reap)


# ----------------------------------------------------------------------------- flwr CLI


def write_flower_config(flwr_home: Path, name: str, entry: dict[str, object]) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in entry.items()]  # TOML strings / booleans
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def flwr(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "flwr"), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
    )


def flwr_json(*args: str, env: dict[str, str]) -> dict:
    """A flwr command with ``--format json``; {} unless it answered ``success: true``
    (with ``--format json`` flwr exits 0 even when it cannot reach the SuperLink)."""
    result = flwr(*args, "--format", "json", env=env)
    try:
        answer = json.loads(result.stdout)
    except json.JSONDecodeError:
        return {}
    return answer if isinstance(answer, dict) and answer.get("success") else {}


def online_nodes(connection: str, env: dict[str, str]) -> list[str]:
    nodes = flwr_json("supernode", "ls", connection, env=env).get("nodes", [])
    return sorted(n["node-id"] for n in nodes if n.get("status") == "online")


def run_config_args(run_dir: Path, overrides: Iterable[str] = TINY_2, config_file: Path | None = None) -> list[str]:
    """``--run-config`` values for the app's two keys (TOML strings: single quotes, no escapes)."""
    joined = ";".join([*overrides, f"output.run_dir={run_dir}"])
    args = ["--run-config", f"config-overrides='{joined}'"]
    if config_file is not None:
        args += ["--run-config", f"config-file='{config_file}'"]
    return args


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, explain: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{explain()}")
        time.sleep(0.5)


@dataclass
class Outcome:
    returncode: int | None  # None: flwr run did not finish in time
    output: str
    status: dict  # the run as `flwr ls --run-id` reports it: status, status-details, elapsed, ...
    seconds: float

    def explain(self) -> str:
        return f"flwr run exit {self.returncode}, run {self.status}\n{self.output[-4000:]}"


class Launch:
    """``flwr run . <connection> --stream`` in the background; :meth:`outcome` waits for it and asks
    ``flwr ls`` for the run's final status (``flwr run`` exits 0 even when the ServerApp fails)."""

    def __init__(
        self,
        procs: Processes,
        connection: str,
        env: dict[str, str],
        run_dir: Path,
        args: list[str],
        name: str = "flwr-run",
    ) -> None:
        self.procs, self.connection, self.env, self.run_dir, self.name = procs, connection, env, run_dir, name
        self.started_at = time.monotonic()
        procs.start(name, [str(VENV_BIN / "flwr"), "run", ".", connection, "--stream", *args], env)
        self._outcome: Outcome | None = None

    def running(self) -> bool:
        return self.procs.started[self.name].poll() is None

    def outcome(self) -> Outcome:
        if self._outcome is None:
            code = self.procs.wait(self.name, self.started_at + RUN_TIMEOUT_S - time.monotonic())
            seconds = time.monotonic() - self.started_at
            output = self.procs.log(self.name)
            status: dict = {}
            if match := re.search(r"Successfully started run (\d+)", output):
                status = (
                    flwr_json("ls", self.connection, "--run-id", match.group(1), env=self.env).get("runs") or [{}]
                )[0]
            self._outcome = Outcome(code, output, status, seconds)
            print(f"\n{self.connection}: flwr run took {seconds:.0f} s")
        return self._outcome


# ----------------------------------------------------------------------------- run checks


def assert_complete_run(outcome: Outcome, run_dir: Path, reference: Path | None = None) -> None:
    """Finished, with eval metrics for every (client, task) held at every evaluated round."""
    assert outcome.returncode == 0, outcome.explain()
    assert outcome.status.get("status") == "finished:completed", outcome.explain()
    for name in ("config.yaml", "metrics.jsonl", "server.jsonl", "encoder.pt", "summary.json", "summary.md"):
        assert (run_dir / name).is_file(), f"{name} missing in {run_dir}\n{outcome.explain()}"
    cfg = load_config(run_dir / "config.yaml")
    rows = read_rows(run_dir / "metrics.jsonl")
    held = {(c, t) for c in range(cfg.clients.count) for t in cfg.clients.tasks_of(c, cfg.data.task_names())}
    assert len(held) > cfg.clients.count  # clients hold several tasks each
    for r in sorted({0, cfg.rounds, *range(cfg.eval_every, cfg.rounds + 1, cfg.eval_every)}):
        evals = [row for row in rows if row["split"] == "eval" and row["round"] == r]
        got = {(row["client"], row["task"]) for row in evals}
        assert got == held, f"eval rows of round {r}: {sorted(got)} != every (client, task) held: {sorted(held)}"
        assert len(evals) == len(held) and all(row["loss"] is not None for row in evals)
    server_rows = read_rows(run_dir / "server.jsonl")
    assert [r["round"] for r in server_rows] == list(range(1, cfg.rounds + 1))
    assert all(r["replies"] == cfg.clients.count and r["failures"] == 0 for r in server_rows), server_rows
    if reference is not None:
        # Same config and seed, same metrics as on the simulation engine (where context.state lives
        # in the engine): every evaluation and the round-2 training start from the private heads.
        assert (reference / "metrics.jsonl").is_file(), "no reference: the run on the simulation engine failed"
        assert rows == read_rows(reference / "metrics.jsonl"), "metrics differ from the simulation engine's run"


def eval_losses(
    client: LocalClient, shared: dict[str, torch.Tensor], private: dict[str, torch.Tensor] | None
) -> dict[str, float]:
    [metrics] = client.evaluate(shared, private)
    return {task: metrics[f"eval/{task}/loss"] for task in client.specs}


def assert_stopped_cleanly(procs: Processes) -> None:
    forced = procs.stop()
    if forced:
        warnings.warn(f"needed SIGKILL: {forced}", stacklevel=2)
    assert not procs.exposed, f"listening beyond loopback: {sorted(procs.exposed)}"


# ----------------------------------------------------------------------------- a federation


class Federation:
    """A SuperLink and SuperNodes on 127.0.0.1, driven through the flwr CLI."""

    def __init__(self, root: Path, certs: Path | None = None) -> None:
        self.root, self.certs = root, certs
        self.procs = Processes(root / "logs")
        self.name = "secure" if certs else "loopback"
        self.port = free_port()
        self.env = self.procs.env(root / "flwr-home")
        entry: dict[str, object] = {"address": f"127.0.0.1:{self.port}"}
        entry.update({"root-certificates": str(certs / "ca.crt")} if certs else {"insecure": True})
        write_flower_config(root / "flwr-home", self.name, entry)

    def start_superlink(self) -> None:
        c = self.certs
        tls = (["--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile", str(c / "server.pem"), "--ssl-keyfile", str(c / "server.key"),
                "--enable-supernode-auth"] if c else ["--insecure"])  # fmt: skip
        argv = [str(VENV_BIN / "flower-superlink"), *tls, "--host", "127.0.0.1", "--port", str(self.port),
                "--database", str(self.root / "state.db"), "--disable-runtime-dependency-installation"]  # fmt: skip
        self.procs.start("superlink", argv, self.env)

    def wait_superlink(self) -> None:
        def answers() -> bool:
            assert self.procs.started["superlink"].poll() is None, self.procs.log("superlink")
            return bool(flwr_json("supernode", "ls", self.name, env=self.env))

        wait_until(answers, START_TIMEOUT_S, f"the {self.name} SuperLink", lambda: self.procs.log("superlink"))

    def register(self, public_key: Path) -> None:
        result = flwr("supernode", "register", str(public_key), self.name, env=self.env)
        assert result.returncode == 0 and "registered successfully" in result.stdout, result.stdout + result.stderr

    def start_supernode(
        self, name: str, partition: int, partitions: int, key: Path | None = None, warm: bool = True, **extra_env: str
    ) -> None:
        """``warm``: its ClientApps hand their messages to a warm host (``clients.deployed_app``)."""
        security = ["--root-certificates", str(self.certs / "ca.crt")] if self.certs else ["--insecure"]
        if key is not None:
            security += ["--auth-supernode-private-key", str(key)]
        node_config = f'partition-id={partition} num-partitions={partitions} state-dir="{self.state_dir}"'
        node_config += f" warm-clientapp={str(warm).lower()}"
        argv = [str(VENV_BIN / "flower-supernode"), *security, "--superlink", f"127.0.0.1:{self.port}",
                "--node-config", node_config, "--host", "127.0.0.1", "--port", str(free_port())]  # fmt: skip
        # each SuperNode gets its own FLWR_HOME: it installs the FAB there; its SuperExec looks for work
        # every 0.1 s instead of every second (docs/DEPLOYMENT.md)
        env = self.procs.env(self.root / f"{name}-home", FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1", **extra_env)
        self.procs.start(name, argv, env)

    @property
    def state_dir(self) -> Path:
        """Where the SuperNodes persist their clients' private state (one client-<id>/ each)."""
        return self.root / "client-state"

    def start_supernodes(self, count: int, keys: list[Path] | None = None, warm: bool = True) -> None:
        for i in range(count):
            self.start_supernode(f"supernode-{i}", i, count, keys[i] if keys else None, warm)

    def wait_supernodes(self, count: int) -> list[str]:
        nodes: list[str] = []

        def all_online() -> bool:
            nodes[:] = online_nodes(self.name, self.env)
            return len(nodes) == count

        wait_until(all_online, START_TIMEOUT_S, f"{count} SuperNodes online on {self.name}",
                   lambda: "\n".join(self.procs.log(f"supernode-{i}")[-2000:] for i in range(count)))  # fmt: skip
        return nodes

    def launch(self, args: list[str], name: str = "flwr-run") -> Launch:
        return Launch(self.procs, self.name, self.env, self.root / "run", args, name)
