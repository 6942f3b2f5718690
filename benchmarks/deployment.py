"""Where a deployed round's time goes: a SuperLink and 2 SuperNodes on 127.0.0.1 (insecure), the tiny
default model, the same federation running the same experiment twice in one go:

* ``pull-interval=3``: the ServerApp pulls replies every 3 s, as Flower's ``HttpGrid.send_and_receive`` does;
* ``pull-interval=0.1``: fedmtl's default since this benchmark (``server.loop.exchange``).

    python benchmarks/deployment.py [--rounds 8] [--no-write]

Per round (median over the training-only rounds) it reports the wall seconds the ServerApp recorded
(``server.jsonl``), and, for the run at pull-interval 0.1 s, splits them into parts from timestamps taken on
fedmtl's side (``fedmtl/core/timeline.py``: the ServerApp's send, push and pulls, each ClientApp process's
start, its handler, training's start and end, its reply), along the last client to reply. The SuperNodes
run with ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1`` (docs/DEPLOYMENT.md), as the deployment tests do.

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
from fedmtl.core.timeline import TIMELINE_VAR  # noqa: E402

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
SUPEREXEC_POLL_S = "0.1"  # FLWR_SUPEREXEC_TASK_POLL_INTERVAL on the SuperNodes (Flower's default: 1 s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Federation:
    """SuperLink + SuperNodes as process groups of their own; :meth:`stop` ends them all."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.timeline = root / "timeline.jsonl"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(root / "flwr-home"), "RAY_ADDRESS": "local",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", TIMELINE_VAR: str(self.timeline)}  # fmt: skip
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
            env = {
                **self.env,
                "FLWR_HOME": str(self.root / f"node-{i}"),
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_S,
            }
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

    def run(self, run_dir: Path, rounds: int, pull_interval: float) -> tuple[float, list[dict]]:
        """The run's wall seconds and its timeline lines."""
        overrides = ";".join((*TINY, f"rounds={rounds}", f"eval_every={rounds}", f"output.run_dir={run_dir}"))
        started, wall_started = time.monotonic(), time.time()
        result = self.flwr("run", ".", "bench", "--stream", "--run-config",
                           f"config-overrides='{overrides}' pull-interval={pull_interval}", timeout=900)  # fmt: skip
        if not (run_dir / "summary.md").is_file():
            raise RuntimeError(f"the run failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
        lines = [json.loads(line) for line in self.timeline.read_text().splitlines()] if self.timeline.is_file() else []
        return time.monotonic() - started, [line for line in lines if line["t"] >= wall_started]

    def stop(self) -> None:
        for proc in reversed(self.procs):  # SuperNodes first, then the SuperLink
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group's helpers (SuperExec, ClientApp) too
            proc.wait()


PARTS = (  # (label, from step, to step) along the last client to reply; server_* steps are the ServerApp's
    ("ServerApp pushes the messages to the SuperLink", "server_send", "server_pushed"),
    (
        "until the ClientApp process starts (SuperNode's poll, SuperExec's poll, process spawn)",
        "server_pushed",
        "process_started",
    ),
    (
        "ClientApp process start to its handler (Python, imports, FAB, Flower's ClientApp load)",
        "process_started",
        "clientapp_handler",
    ),
    ("handler to training (config, data, model)", "clientapp_handler", "train_start"),
    ("the client's training (`LocalClient.train`)", "train_start", "train_end"),
    ("training's end to the reply handed to Flower", "train_end", "clientapp_reply"),
    (
        "reply handed over to the ServerApp pulling it (process exit, SuperNode push, SuperLink, pull)",
        "clientapp_reply",
        "server_replies",
    ),
)
OWN_WORK = "the rest of the round: the ServerApp's own work (sampling, messages, aggregation, files)"


def round_steps(timeline: list[dict], server_rows: list[dict]) -> list[dict[str, float]]:
    """Per training round, the time of each step of :data:`PARTS` along the client whose reply came last,
    and the round's seconds in ``server.jsonl``."""
    sends = sorted((line for line in timeline if line["step"] == "server_send"), key=lambda line: line["t"])
    rounds = []
    for send in sends:
        if send.get("kind") != "train":
            continue
        round_ = send["round"]
        later = [line for line in timeline if line["t"] >= send["t"]]
        replies = next(line for line in later if line["step"] == "server_replies" and line["round"] == round_)
        window = [line for line in later if line["t"] <= replies["t"]]
        client = [line for line in window if line.get("round") == round_ and "partition" in line]
        last = max((line for line in client if line["step"] == "clientapp_reply"), key=lambda line: line["t"])
        own = {line["step"]: line for line in client if line["partition"] == last["partition"]}
        seconds = next(row["seconds"] for row in server_rows if row["round"] == round_)
        steps = {
            "server_send": send["t"],
            "server_pushed": next(line["t"] for line in window if line["step"] == "server_pushed"),
            "process_started": own["clientapp_handler"]["process_started"],
            **{step: own[step]["t"] for step in ("clientapp_handler", "train_start", "train_end", "clientapp_reply")},
            "server_replies": replies["t"],
            "seconds": seconds,
            "round": round_,
        }
        rounds.append(steps)
    return rounds


def server_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "server.jsonl").read_text().splitlines() if line.strip()]


def round_seconds(run_dir: Path, rounds: int) -> float:
    return statistics.median(r["seconds"] for r in server_rows(run_dir) if r["round"] < rounds)  # the last evaluates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results: dict[float, tuple[float, float]] = {}
    steps: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="fedmtl-deploy-bench-") as tmp:
        fed = Federation(Path(tmp))
        try:
            fed.up()
            for interval in (3.0, 0.1):
                run_dir = Path(tmp) / f"run-{interval}"
                total, timeline = fed.run(run_dir, args.rounds, interval)
                results[interval] = (round_seconds(run_dir, args.rounds), total)
                print(f"pull-interval {interval}: {results[interval][0]:.2f} s a round, flwr run {total:.1f} s")
            steps = [r for r in round_steps(timeline, server_rows(run_dir)) if r["round"] < args.rounds]
        finally:
            fed.stop()
    before, after = results[3.0][0], results[0.1][0]
    parts = [(label, statistics.median(r[end] - r[begin] for r in steps)) for label, begin, end in PARTS]
    own = statistics.median(r["seconds"] - (r["server_replies"] - r["server_send"]) for r in steps)
    lines = [
        f"Machine: {machine_info()}. flwr 1.41, a SuperLink and {CLIENTS} SuperNodes on 127.0.0.1 (insecure, "
        f"`FLWR_SUPEREXEC_TASK_POLL_INTERVAL={SUPEREXEC_POLL_S}`), the tiny default model, {args.rounds} rounds "
        f"(evaluated at 0 and {args.rounds}), both runs on the same federation one after the other. A training "
        "round = one message to each SuperNode and its reply.",
        "",
        "| | pull-interval 3 s (Flower's send_and_receive) | pull-interval 0.1 s (fedmtl's default) |",
        "|---|---:|---:|",
        f"| seconds per training round (median, `server.jsonl`) | {before:.2f} | {after:.2f} |",
        f"| whole `flwr run` (s) | {results[3.0][1]:.1f} | {results[0.1][1]:.1f} |",
        "",
        f"After / before: **{after / before:.2f}** of the round time ({before - after:.2f} s less a round).",
        "",
        f"One training round at pull-interval 0.1 s, split by timestamps taken in the ServerApp and the ClientApp "
        f"processes (`fedmtl/core/timeline.py`), along the client whose reply came last; median over the "
        f"{len(steps)} training-only rounds (the parts' medians need not add up exactly):",
        "",
        "| part | seconds |",
        "|---|---:|",
        *(f"| {label} | {value:.2f} |" for label, value in parts),
        f"| {OWN_WORK} | {own:.2f} |",
        f"| **the round** (`server.jsonl`) | **{after:.2f}** |",
        "",
        "Flower sets the floors here, not fedmtl: the SuperNode sleeps a hard-coded 3 s after a pull that found "
        "no message (`flwr/supernode/start_client_internal.py`, `time.sleep(3)`; no `flower-supernode` flag), "
        "so a pushed message waits 0-3 s to be seen; every message starts a fresh ClientApp process (Flower's "
        "process isolation; `flwr-clientapp` takes one token and exits), which pays Python's start-up and the "
        "imports; and the wait for the message's data retries after a hard-coded 1 s "
        "(`flwr/supercore/constant.py`). fedmtl's parts are the pull interval (now 0.1 s, run-config "
        "`pull-interval`), the ClientApp's imports (the DP accountant is imported lazily) and the training, of "
        "which about 1 s is torch importing `torch._dynamo` for the fresh process's first optimizer "
        "(docs/DEPLOYMENT.md).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("deployment", "## Deployment round latency (`benchmarks/deployment.py`)\n\n" + text)


if __name__ == "__main__":
    main()
