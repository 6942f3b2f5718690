"""The same ServerApp and ClientApp outside simulate.py: ``flwr run .`` on Flower's simulation
engine, and a real deployment on loopback (a SuperLink and SuperNodes as separate processes),
insecure and with TLS + SuperNode authentication. Fast tests cover how the apps read their run
config, what the FAB contains and ``deploy/make_certs.sh``.

The three runs are slow (a deployment round takes tens of seconds: SuperNodes poll every 3 s and
every message starts a fresh ClientApp process) but mostly idle, so one module fixture launches
them side by side and each test waits for its own.

Cleanup: every process a test starts carries ``FEDMTL_TEST_TAG=<id>`` in its environment, and so
does everything it spawns (SuperExec, ServerApp, ClientApp, Ray, the local SuperLink that
``flwr run`` leaves behind detached): Flower and Ray pass their environment on. At the end,
whatever carries the tag gets SIGTERM, and SIGKILL after a grace period, also when a test fails.
"""

from __future__ import annotations

import contextlib
import io
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
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from fedmtl.config.loading import load_config
from fedmtl.config.run_config import config_from_run_config, resolve_config_file
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.local.client import MODEL, LocalClient, strip_prefix
from fedmtl.local.state_store import ClientStateStore
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
MAKE_CERTS = ROOT / "deploy" / "make_certs.sh"
# 2 clients, 2 rounds, the tiny model: client c holds tasks c and c+1 of the default suite. Evaluated at
# rounds 0 and 2 only: every message exchange costs a deployment tens of seconds.
TINY_2 = (
    *tiny_overrides(2),
    "rounds=2",
    "eval_every=2",
)
SECURE_AGGREGATION = (
    "privacy.secure_aggregation.enabled=true",
    "server.aggregator={name: fedavg, weighted: false}",
    "rounds=1",
    "eval_every=1",
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

    def __init__(self, procs: Processes, connection: str, env: dict[str, str], run_dir: Path, args: list[str]) -> None:
        self.procs, self.connection, self.env, self.run_dir = procs, connection, env, run_dir
        self.started_at = time.monotonic()
        procs.start("flwr-run", [str(VENV_BIN / "flwr"), "run", ".", connection, "--stream", *args], env)
        self._outcome: Outcome | None = None

    def outcome(self) -> Outcome:
        if self._outcome is None:
            code = self.procs.wait("flwr-run", self.started_at + RUN_TIMEOUT_S - time.monotonic())
            seconds = time.monotonic() - self.started_at
            output = self.procs.log("flwr-run")
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


# ----------------------------------------------------------------------------- fast tests


def test_relative_config_file_is_looked_up_in_the_app_first(tmp_path, monkeypatch):
    app = tmp_path / "app"
    (app / "configs").mkdir(parents=True)
    (app / "configs" / "exp.yaml").write_text("rounds: 3\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config_file("", app) is None
    assert resolve_config_file("configs/exp.yaml", app) == str(app / "configs" / "exp.yaml")
    assert resolve_config_file(str(tmp_path / "x.yaml"), app) == str(tmp_path / "x.yaml")
    assert resolve_config_file("elsewhere.yaml", app) == "elsewhere.yaml"  # cwd-relative fallback
    cfg = config_from_run_config({"config-file": "configs/exp.yaml", "config-overrides": " seed=4 ; name=x;"}, app)
    assert (cfg.rounds, cfg.seed, cfg.name) == (3, 4, "x")


def test_config_overrides_from_run_config_match_simulate_overrides():
    joined = ";".join(TINY_2)
    assert config_from_run_config({"config-file": "", "config-overrides": joined}) == load_config(None, list(TINY_2))
    assert config_from_run_config({}) == load_config(None, [])


def test_typed_run_config_keys_sit_between_the_config_file_and_the_overrides(tmp_path):
    app = tmp_path / "app"
    (app / "configs").mkdir(parents=True)
    (app / "configs" / "exp.yaml").write_text(
        "rounds: 3\nseed: 7\nclient: {lr: 0.2}\nserver: {aggregator: {name: cagrad, c: 0.4}}\n"
    )
    run_config = {
        "config-file": "configs/exp.yaml",
        "rounds": 5,
        "aggregator": "pcgrad",
        "output-dir": "/tmp/x y",
        "lr": 0.0,
    }
    cfg = config_from_run_config({**run_config, "config-overrides": "rounds=6"}, app)
    assert (cfg.rounds, cfg.seed, cfg.client.lr, cfg.output.dir) == (6, 7, 0.2, "/tmp/x y")  # lr 0.0 = not set here
    assert cfg.server.aggregator.name == "pcgrad"  # the whole component: cagrad's c does not leak into pcgrad
    assert config_from_run_config(run_config, app).rounds == 5
    assert config_from_run_config({"lr": 5e-5}).client.lr == 5e-5  # a float TOML writes with an exponent


def test_the_default_app_root_is_the_project_so_bundled_configs_are_found(tmp_path, monkeypatch):
    from fedmtl.config.run_config import APP_ROOT

    assert (APP_ROOT / "pyproject.toml").is_file()
    monkeypatch.chdir(tmp_path)  # a SuperNode's working directory is not the app
    cfg = config_from_run_config({"config-file": "configs/study_digits.yaml", "config-overrides": "study.arms=[]"})
    assert cfg.name == "study_digits"


def test_pyproject_declares_every_typed_run_config_key_unset():
    import tomllib

    from fedmtl.config.run_config import CONFIG_FILE_KEY, OVERRIDES_KEY, PULL_INTERVAL_KEY, RESUME_DIR_KEY, TYPED_KEYS

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == {CONFIG_FILE_KEY, OVERRIDES_KEY, RESUME_DIR_KEY, PULL_INTERVAL_KEY, *TYPED_KEYS}
    assert all(declared[key] == unset for key, (_, unset) in TYPED_KEYS.items())
    assert config_from_run_config(declared) == load_config(None, [])  # the declared defaults change nothing


@pytest.mark.parametrize(
    ("overrides", "section"),
    [
        ("study.arms=[fed_mtl, local_stl]", "study.arms"),
        ("study.arms=[fed_mtl, local_stl];sweep.grid={rounds: [1, 2]}", "sweep.grid"),
    ],
)
def test_a_study_or_sweep_under_flwr_run_is_refused_with_one_line(overrides, section):
    with pytest.raises(ConfigError) as caught:  # the default config, made a study or sweep by the run config alone
        config_from_run_config({"config-overrides": overrides})
    assert caught.value.path == section and "simulate.py" in str(caught.value) and "\n" not in str(caught.value)


def test_fab_contains_the_code_but_not_venv_runs_or_tests():
    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(ROOT)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert len(fab) < 2_000_000, f"FAB is {len(fab)} bytes"
    assert {"pyproject.toml", "server/server_app.py", "clients/client_app.py", "fedmtl/config/run_config.py"} <= set(
        names
    )
    leaked = [n for n in names if n.startswith((".venv/", "runs/", ".git/")) or "/test_" in n or n.startswith("test_")]
    assert not leaked, leaked


def make_certs(directory: Path, *count: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(MAKE_CERTS), str(directory), *count], capture_output=True, text=True, timeout=60)


def test_make_certs_writes_a_ca_a_loopback_server_certificate_and_supernode_keys(tmp_path):
    made = make_certs(tmp_path / "c", "2")
    assert made.returncode == 0, made.stderr
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == [
        ".gitignore",
        "ca.crt",
        "ca.key",
        "server.key",
        "server.pem",
        "supernode-0",
        "supernode-0.pub",
        "supernode-1",
        "supernode-1.pub",
    ]
    assert (tmp_path / "c" / ".gitignore").read_text().strip() == "*"  # never committed, wherever it lands
    assert (tmp_path / "c" / "ca.key").stat().st_mode & 0o077 == 0 and (
        tmp_path / "c" / "supernode-0"
    ).stat().st_mode & 0o077 == 0
    cert = ["openssl", "x509", "-in", str(tmp_path / "c" / "server.pem"), "-noout", "-ext", "subjectAltName"]
    san = subprocess.run(cert, capture_output=True, text=True).stdout
    assert "DNS:localhost" in san and "IP Address:127.0.0.1" in san and "IP Address:0:0:0:0:0:0:0:1" in san
    assert (tmp_path / "c" / "supernode-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    again = make_certs(tmp_path / "c")
    assert again.returncode != 0 and "exists" in again.stderr  # never overwrites
    assert make_certs(tmp_path / "d", "two").returncode == 2


# ----------------------------------------------------------------------------- slow: the three runs


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

    def start_supernode(self, name: str, partition: int, partitions: int, key: Path | None = None) -> None:
        security = ["--root-certificates", str(self.certs / "ca.crt")] if self.certs else ["--insecure"]
        if key is not None:
            security += ["--auth-supernode-private-key", str(key)]
        node_config = f'partition-id={partition} num-partitions={partitions} state-dir="{self.state_dir}"'
        argv = [str(VENV_BIN / "flower-supernode"), *security, "--superlink", f"127.0.0.1:{self.port}",
                "--node-config", node_config, "--host", "127.0.0.1", "--port", str(free_port())]  # fmt: skip
        # each SuperNode gets its own FLWR_HOME: it installs the FAB there; its SuperExec looks for work
        # every 0.1 s instead of every second (docs/DEPLOYMENT.md)
        env = self.procs.env(self.root / f"{name}-home", FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1")
        self.procs.start(name, argv, env)

    @property
    def state_dir(self) -> Path:
        """Where the SuperNodes persist their clients' private state (one client-<id>/ each)."""
        return self.root / "client-state"

    def start_supernodes(self, count: int, keys: list[Path] | None = None) -> None:
        for i in range(count):
            self.start_supernode(f"supernode-{i}", i, count, keys[i] if keys else None)

    def wait_supernodes(self, count: int) -> list[str]:
        nodes: list[str] = []

        def all_online() -> bool:
            nodes[:] = online_nodes(self.name, self.env)
            return len(nodes) == count

        wait_until(all_online, START_TIMEOUT_S, f"{count} SuperNodes online on {self.name}",
                   lambda: "\n".join(self.procs.log(f"supernode-{i}")[-2000:] for i in range(count)))  # fmt: skip
        return nodes

    def launch(self, args: list[str]) -> Launch:
        return Launch(self.procs, self.name, self.env, self.root / "run", args)


@dataclass
class Runs:
    simulation: Launch
    insecure: Federation
    insecure_run: Launch
    secure: Federation
    secure_run: Launch
    keys: list[Path]
    secure_nodes: list[str]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[Runs]:
    """The same 2-client, 2-round experiment three ways, launched side by side: ``flwr run`` on the
    simulation engine, an insecure deployment, and a TLS deployment with SuperNode authentication
    (3 key pairs, the first two registered)."""
    root = tmp_path_factory.mktemp("flower")
    sim_procs = Processes(root / "simulation" / "logs")
    insecure, secure = Federation(root / "insecure"), Federation(root / "secure", root / "secure" / "certs")
    try:
        # flwr run starts a local SuperLink (simulation mode), detached, and leaves it running; its
        # ports move off the defaults (39091/39093) so that one someone else left running is not used
        sim_home = root / "simulation" / "flwr-home"
        write_flower_config(sim_home, "local", {"address": ":local:"})
        sim_env = sim_procs.env(
            sim_home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(free_port())
        )
        sim_run_dir = root / "simulation" / "run"
        simulation = Launch(
            sim_procs,
            "local",
            sim_env,
            sim_run_dir,
            [*run_config_args(sim_run_dir), "--federation-config", "num-supernodes=2"],
        )

        made = make_certs(secure.certs, "3")
        assert made.returncode == 0, made.stderr
        keys = [secure.certs / f"supernode-{i}" for i in range(3)]
        insecure.start_superlink()
        secure.start_superlink()
        insecure.wait_superlink()
        insecure.start_supernodes(2)
        secure.wait_superlink()
        for key in keys[:2]:
            secure.register(key.with_suffix(".pub"))
        secure.start_supernodes(2, keys[:2])
        insecure.wait_supernodes(2)
        insecure_run = insecure.launch(run_config_args(insecure.root / "run"))
        secure_nodes = secure.wait_supernodes(2)
        # the TLS run reads the experiment from a YAML file (absolute path), the run directory from an
        # override; it also aggregates with SecAgg+ (privacy.secure_aggregation): one round, a plain mean
        # (no example counts to ask for), since every SecAgg+ stage starts a ClientApp process per node
        config_file = secure.root / "tiny.yaml"
        secure_config = load_config(None, [*TINY_2, *SECURE_AGGREGATION])
        config_file.write_text(yaml.safe_dump(secure_config.to_dict(), sort_keys=False))
        secure_run = secure.launch(run_config_args(secure.root / "run", overrides=(), config_file=config_file))
        yield Runs(simulation, insecure, insecure_run, secure, secure_run, keys, secure_nodes)
    finally:
        survivors = []
        for procs in (sim_procs, insecure.procs, secure.procs):
            try:
                procs.stop()
            except AssertionError as err:  # stop the others all the same
                survivors.append(str(err))
        assert not survivors, survivors


@pytest.mark.slow
def test_flwr_run_on_the_simulation_engine(runs):
    outcome = runs.simulation.outcome()
    assert_stopped_cleanly(runs.simulation.procs)  # also the local SuperLink and Ray: frees the CPU for the others
    assert_complete_run(outcome, runs.simulation.run_dir)


@pytest.mark.slow
def test_insecure_deployment_on_loopback(runs):
    outcome = runs.insecure_run.outcome()
    assert_complete_run(outcome, runs.insecure_run.run_dir, reference=runs.simulation.run_dir)


@pytest.mark.slow
def test_supernode_private_heads_persist_across_rounds_and_never_leave(runs):
    """Each round is a fresh ClientApp process; the heads live in the SuperNode's context.state (and
    its state-dir). The final evaluation must have used the heads trained in round 2, which in turn
    differ from round 1's; the server never saw a head parameter."""
    fed, run_dir = runs.insecure, runs.insecure_run.run_dir
    assert_complete_run(runs.insecure_run.outcome(), run_dir)
    assert_stopped_cleanly(fed.procs)
    cfg = load_config(run_dir / "config.yaml")
    encoder = torch.load(run_dir / "encoder.pt", weights_only=True)
    final_eval = [
        row for row in read_rows(run_dir / "metrics.jsonl") if row["split"] == "eval" and row["round"] == cfg.rounds
    ]
    for client_id in range(cfg.clients.count):
        store = ClientStateStore(fed.state_dir, client_id)
        assert store.versions() == [1, 2], f"client {client_id}: state written after rounds {store.versions()}"
        first, last = store.load(1), store.load(2)
        heads = strip_prefix(MODEL, last)
        assert heads and first.keys() == last.keys()
        assert not set(heads) & set(encoder), "a private parameter reached the server"
        assert any(not torch.equal(first[k], last[k]) for k in first), "round 2 did not train the heads"
        client = LocalClient.for_client(cfg, client_id)
        recorded = {row["task"]: row["loss"] for row in final_eval if row["client"] == client_id}
        with_saved_heads, with_fresh_heads = (eval_losses(client, encoder, private) for private in (last, None))
        assert with_saved_heads == pytest.approx(recorded, rel=1e-5), (
            "final evaluation did not use the heads trained in round 2"
        )
        assert with_fresh_heads != pytest.approx(recorded, rel=1e-3), "freshly initialised heads give the same losses"


@pytest.mark.slow
def test_supernode_with_unregistered_key_is_refused(runs):
    fed = runs.secure
    fed.start_supernode("intruder", 0, 2, runs.keys[2])
    code = fed.procs.wait("intruder", START_TIMEOUT_S)
    log = fed.procs.log("intruder")
    assert code is not None, f"a SuperNode with an unregistered key kept running\n{log[-2000:]}"
    # Flower's exit code 305 (SUPERNODE_CONNECTION_ERROR) is logged; the process exits with status 1
    assert code == 1 and "Exit Code: 305" in log, f"exit status {code}\n{log[-2000:]}"
    assert online_nodes(fed.name, fed.env) == runs.secure_nodes


@pytest.mark.slow
def test_secure_deployment_with_tls_supernode_auth_and_secure_aggregation(runs, tmp_path):
    fed = runs.secure
    outcome = runs.secure_run.outcome()
    assert_complete_run(outcome, runs.secure_run.run_dir)  # the encoder's precision: test_secure_aggregation.py
    [row] = read_rows(runs.secure_run.run_dir / "server.jsonl")
    assert row["secure_aggregation"]["contributors"] == 2 and row["clients"] is None, row
    assert row["bytes_up"] > 0 and row["failures"] == 0
    # the SuperLink speaks TLS only: a client without TLS gets no answer
    write_flower_config(tmp_path / "plain-home", "plain", {"address": f"127.0.0.1:{fed.port}", "insecure": True})
    assert not flwr_json("ls", "plain", env=fed.procs.env(tmp_path / "plain-home"))
    assert flwr_json("ls", fed.name, env=fed.env), "the TLS connection itself does not answer"
    assert_stopped_cleanly(fed.procs)
