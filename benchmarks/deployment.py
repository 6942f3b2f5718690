"""Where a deployed round's time goes: a SuperLink and 2 SuperNodes on 127.0.0.1 (insecure), the tiny
default model, the same federation running the same experiment twice in one go:

* ``pull-interval=3``: the ServerApp pulls replies every 3 s, as Flower's ``HttpGrid.send_and_receive`` does;
* ``pull-interval=0.1``: fedmtl's default since this benchmark (``server.loop.exchange``).

    python benchmarks/deployment.py [--rounds 4] [--no-write]

Per round (median over the training-only rounds) it reports the wall seconds the ServerApp recorded
(``server.jsonl``), and splits them into parts:

* measured: the clients' own work (``LocalClient.train`` in this process, same config), and the start
  of a fresh Python process importing the ClientApp (what the SuperNode's SuperExec does per message);
* estimated: the SuperNode's idle poll (a hard-coded ``time.sleep(3)`` when it pulled nothing: on
  average 1.5 s until a pushed message is seen), the SuperExec's task poll (1 s default, settable with
  ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``: 0.5 s on average), and the ServerApp's pull interval (half an
  interval on average); the rest is Flower's messaging and the ServerApp's own work.

Writes the figures and the ratio between the two runs to BENCHMARKS.md. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.runtime.offline import OFFLINE_ENV, set_offline_env  # noqa: E402

set_offline_env()

from benchmarks._report import machine_info, write_section  # noqa: E402
from fedmtl.config.loading import load_config  # noqa: E402
from fedmtl.federation.algorithm import ServerAlgorithm  # noqa: E402
from fedmtl.local.client import LocalClient  # noqa: E402

BIN = Path(sys.executable).parent
CLIENTS = 2
TINY = (
    f"clients.count={CLIENTS}",
    "clients.samples_per_task=32",
    "clients.eval_samples_per_task=32",
    "client.local_steps=2",
    "client.batch_size=16",
    "model.encoder_hidden=[8]",
    "model.representation_dim=4",
    "model.head_hidden=[]",
)
SUPERNODE_IDLE_SLEEP_S = 3.0  # flwr/supernode/start_client_internal.py: time.sleep(3) after an empty pull
SUPEREXEC_POLL_S = 1.0  # flwr/supercore/superexec/run_superexec.py: _DEFAULT_TASK_POLL_INTERVAL_SECONDS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Federation:
    """SuperLink + SuperNodes as process groups of their own; :meth:`stop` ends them all."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(root / "flwr-home"), "RAY_ADDRESS": "local",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
        (root / "flwr-home").mkdir(parents=True)
        (root / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.root / f"{name}.log", "w") as log:
            self.procs.append(
                subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

    def up(self) -> None:
        self.start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                   str(self.port), "--database", str(self.root / "state.db"),
                   "--disable-runtime-dependency-installation"], self.env)  # fmt: skip
        for i in range(CLIENTS):
            env = {**self.env, "FLWR_HOME": str(self.root / f"node-{i}")}
            self.start(f"supernode-{i}", [str(BIN / "flower-supernode"), "--insecure", "--superlink",
                       f"127.0.0.1:{self.port}", "--host", "127.0.0.1", "--port", str(free_port()),
                       "--node-config", f"partition-id={i} num-partitions={CLIENTS}"], env)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            answer = self.flwr("supernode", "ls", "bench", "--format", "json")
            with contextlib.suppress(json.JSONDecodeError):
                nodes = json.loads(answer.stdout).get("nodes", [])
                if sum(n.get("status") == "online" for n in nodes) == CLIENTS:
                    return
            time.sleep(1)
        raise RuntimeError(f"the SuperNodes did not come online; see {self.root}")

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def run(self, run_dir: Path, rounds: int, pull_interval: float) -> float:
        overrides = ";".join((*TINY, f"rounds={rounds}", f"eval_every={rounds}", f"output.run_dir={run_dir}"))
        started = time.monotonic()
        result = self.flwr("run", ".", "bench", "--stream", "--run-config",
                           f"config-overrides='{overrides}' pull-interval={pull_interval}", timeout=900)  # fmt: skip
        if not (run_dir / "summary.md").is_file():
            raise RuntimeError(f"the run failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
        return time.monotonic() - started

    def stop(self) -> None:
        for proc in reversed(self.procs):  # SuperNodes first, then the SuperLink
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group's helpers (SuperExec, ClientApp) too
            proc.wait()


def client_work_s(rounds: int) -> float:
    """Seconds one client's training takes per round in this process (median of ``rounds``)."""
    cfg = load_config(None, [*TINY, f"rounds={rounds}"])
    client, shared = LocalClient.for_client(cfg, 0), ServerAlgorithm(cfg).state_for(0)
    times, private = [], None
    for r in range(1, rounds + 1):
        started = time.perf_counter()
        private = client.train(shared, private, r).private
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def process_start_s(repeats: int = 3) -> float:
    """A fresh interpreter importing the ClientApp (median of ``repeats``)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import clients.client_app"], cwd=ROOT, check=True,
                       env={**os.environ, **OFFLINE_ENV})  # fmt: skip
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def round_seconds(run_dir: Path, rounds: int) -> float:
    rows = [json.loads(line) for line in (run_dir / "server.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(r["seconds"] for r in rows if r["round"] < rounds)  # the last also evaluates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work, start = client_work_s(args.rounds), process_start_s()
    results: dict[float, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fedmtl-deploy-bench-") as tmp:
        fed = Federation(Path(tmp))
        try:
            fed.up()
            for interval in (3.0, 0.1):
                total = fed.run(Path(tmp) / f"run-{interval}", args.rounds, interval)
                results[interval] = (round_seconds(Path(tmp) / f"run-{interval}", args.rounds), total)
                print(f"pull-interval {interval}: {results[interval][0]:.2f} s a round, flwr run {total:.1f} s")
        finally:
            fed.stop()
    before, after = results[3.0][0], results[0.1][0]
    lines = [
        f"Machine: {machine_info()}. flwr 1.41, a SuperLink and {CLIENTS} SuperNodes on 127.0.0.1 (insecure), "
        f"the tiny default model, {args.rounds} rounds (evaluated at 0 and {args.rounds}), both runs on the same "
        "federation one after the other. A training round = one message to each SuperNode and its reply.",
        "",
        "| | pull-interval 3 s (Flower's send_and_receive) | pull-interval 0.1 s (fedmtl's default) |",
        "|---|---:|---:|",
        f"| seconds per training round (median, `server.jsonl`) | {before:.2f} | {after:.2f} |",
        f"| whole `flwr run` (s) | {results[3.0][1]:.1f} | {results[0.1][1]:.1f} |",
        "| ServerApp waiting for the pull after the replies are in (estimate: half an interval) | 1.50 | 0.05 |",
        "",
        f"After / before: **{after / before:.2f}** of the round time ({before - after:.2f} s less a round).",
        "",
        "One training round at pull-interval 0.1 s, split (the clients run in parallel, one each):",
        "",
        "| part | seconds | how |",
        "|---|---:|---|",
        f"| the client's training (`LocalClient.train`) | {work:.3f} | measured in-process, same config |",
        f"| a fresh process importing the ClientApp (per message) | {start:.2f} | measured: `python -c 'import clients.client_app'` |",
        f"| SuperNode idle poll until it sees the message | {SUPERNODE_IDLE_SLEEP_S / 2:.2f} | estimate: half of its hard-coded 3 s sleep |",
        f"| SuperExec task poll until it starts the ClientApp | {SUPEREXEC_POLL_S / 2:.2f} | estimate: half of its 1 s default |",
        f"| not accounted for: Flower's messaging, the SuperNode's 0.5 s polls for the ClientApp's reply, two ClientApp processes starting at once on a busy machine, the server's work | {max(after - work - start - SUPERNODE_IDLE_SLEEP_S / 2 - SUPEREXEC_POLL_S / 2 - 0.05, 0):.2f} | remainder |",
        "",
        "What the project controls is the ServerApp's pull interval (now 0.1 s, run-config `pull-interval`). "
        "The SuperNode's 3 s idle sleep is hard-coded in flwr 1.41 (no `flower-supernode` flag); the SuperExec's "
        "task poll can be shortened where SuperNodes are started (`FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1`); "
        "the per-message ClientApp process is Flower's isolation model.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("deployment", "## Deployment round latency (`benchmarks/deployment.py`)\n\n" + text)


if __name__ == "__main__":
    main()
