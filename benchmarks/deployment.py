"""Where a deployed round's time goes: a SuperLink and 2 SuperNodes on 127.0.0.1 (insecure), the tiny
default model, the same experiment on two federations one after the other:

* cold: Flower's process isolation as it comes, a fresh ClientApp process per message that imports torch
  and fedmtl (``warm-clientapp=false``, the SuperNodes' default);
* warm: ``--node-config "... warm-clientapp=true"``, each message handed to the node's warm ClientApp host
  (``clients/deployed_app.py``).

    python benchmarks/deployment.py [--rounds 8] [--no-write]

Per round (median over the training-only rounds) it reports the wall seconds the ServerApp recorded
(``server.jsonl``) and splits them into parts from timestamps taken on fedmtl's side
(``fedmtl/core/timeline.py``: the ServerApp's send, push and pulls, each ClientApp process's start and entry,
the handler, training's start and end, the reply), along the last client to reply. The ServerApp pulls every
0.1 s (run-config ``pull-interval``, fedmtl's default); the SuperNodes run with
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1`` (docs/DEPLOYMENT.md), as the deployment tests do.

Writes the figures and the ratio between the two federations to BENCHMARKS.md. Nothing here is asserted in
tests.
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
from typing import NamedTuple

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
PULL_INTERVAL_S = 0.1  # the ServerApp's (run-config pull-interval; fedmtl's default)
FLOORS = (
    "Flower sets the floors that remain, not fedmtl: the SuperNode sleeps a hard-coded 3 s after a pull that "
    "found no message (`flwr/supernode/start_client_internal.py`, `time.sleep(3)`; no `flower-supernode` flag), "
    "so a pushed message waits 0-3 s to be seen; every message starts a fresh `flwr-clientapp` process (Flower's "
    "process isolation takes one token per process), which pays Python's start-up and Flower's imports before "
    "fedmtl's ClientApp is reached; and the SuperNode looks for a finished reply, and for each of its objects, "
    "every 0.5 s (`_push_messages`, same file) before it uploads the message and then its arrays. fedmtl's parts "
    "are the warm host (no torch and fedmtl imports, no first-step costs in every message's process) and the "
    "ServerApp's pull, which retries a reply whose arrays are still uploading after 0.05 s instead of Flower's "
    "1 s (`server/engines/superlink_pull.py`; `flwr/supercore/constant.py`)."
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Federation:
    """SuperLink + SuperNodes as process groups of their own; :meth:`stop` ends them all."""

    def __init__(self, root: Path, warm: bool) -> None:
        self.root, self.port, self.warm = root, free_port(), warm
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
                       "--node-config", f"partition-id={i} num-partitions={CLIENTS} warm-clientapp={str(self.warm).lower()}"],
                       env)  # fmt: skip
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

    def run(self, run_dir: Path, rounds: int) -> tuple[float, list[dict]]:
        """The run's wall seconds and its timeline lines."""
        overrides = ";".join((*TINY, f"rounds={rounds}", f"eval_every={rounds}", f"output.run_dir={run_dir}"))
        started, wall_started = time.monotonic(), time.time()
        result = self.flwr("run", ".", "bench", "--stream", "--run-config",
                           f"config-overrides='{overrides}' pull-interval={PULL_INTERVAL_S}", timeout=900)  # fmt: skip
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
        "ClientApp process start to fedmtl's ClientApp (Python, Flower's imports, FAB, ClientApp load)",
        "process_started",
        "clientapp_entry",
    ),
    (
        "to fedmtl's handler (cold: importing torch and fedmtl here; warm: the hand-over to the host)",
        "clientapp_entry",
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
        # the ClientApp process that took this training message: the node's last entry before its handler
        entry = max(
            (line for line in window if line["step"] == "clientapp_entry" and line["partition"] == last["partition"]
             and line["t"] <= own["clientapp_handler"]["t"]),
            key=lambda line: line["t"],
        )  # fmt: skip
        seconds = next(row["seconds"] for row in server_rows if row["round"] == round_)
        steps = {
            "server_send": send["t"],
            "server_pushed": next(line["t"] for line in window if line["step"] == "server_pushed"),
            "process_started": entry["process_started"],
            "clientapp_entry": entry["t"],
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


MODES = {False: "cold (a process per message)", True: "warm host (`warm-clientapp=true`)"}


class Measured(NamedTuple):
    round_s: float  # median training round (server.jsonl)
    total_s: float  # the whole flwr run
    rounds: int  # training-only rounds split into parts
    parts: list[float]  # median seconds of each of PARTS
    own_s: float  # the ServerApp's own work


def measure(root: Path, warm: bool, rounds: int) -> Measured:
    """One fresh federation's run of ``rounds`` rounds: its training rounds' seconds and their parts."""
    fed = Federation(root, warm)
    try:
        fed.up()
        run_dir = root / "run"
        total, timeline = fed.run(run_dir, rounds)
    finally:
        fed.stop()
    steps = [r for r in round_steps(timeline, server_rows(run_dir)) if r["round"] < rounds]
    return Measured(
        round_seconds(run_dir, rounds),
        total,
        len(steps),
        [statistics.median(r[end] - r[begin] for r in steps) for _, begin, end in PARTS],
        statistics.median(r["seconds"] - (r["server_replies"] - r["server_send"]) for r in steps),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results: dict[bool, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="fedmtl-deploy-bench-") as tmp:
        for mode in MODES:
            results[mode] = measure(Path(tmp) / ("warm" if mode else "cold"), mode, args.rounds)
            print(f"{MODES[mode]}: {results[mode].round_s:.2f} s a round, flwr run {results[mode].total_s:.1f} s")
    cold, warm = results[False], results[True]
    lines = [
        f"Machine: {machine_info()}. flwr 1.41, a SuperLink and {CLIENTS} SuperNodes on 127.0.0.1 (insecure, "
        f"`FLWR_SUPEREXEC_TASK_POLL_INTERVAL={SUPEREXEC_POLL_S}`, the ServerApp's pull interval "
        f"{PULL_INTERVAL_S} s), the tiny default model, {args.rounds} rounds (evaluated at 0 and {args.rounds}); "
        "the cold federation, then the warm one. A training round = one message to each SuperNode and its reply.",
        "",
        f"| | {MODES[False]} | {MODES[True]} |",
        "|---|---:|---:|",
        f"| seconds per training round (median, `server.jsonl`) | {cold.round_s:.2f} | {warm.round_s:.2f} |",
        f"| whole `flwr run` (s) | {cold.total_s:.1f} | {warm.total_s:.1f} |",
        "",
        f"Warm / cold: **{warm.round_s / cold.round_s:.2f}** of the round time "
        f"({cold.round_s - warm.round_s:.2f} s less a round).",
        "",
        "One training round split by timestamps taken in the ServerApp and the ClientApp processes "
        "(`fedmtl/core/timeline.py`), along the client whose reply came last; medians over the "
        f"{cold.rounds} and {warm.rounds} training-only rounds (the parts' medians need "
        "not add up exactly):",
        "",
        f"| part | {MODES[False]} | {MODES[True]} |",
        "|---|---:|---:|",
        *(f"| {label} | {c:.2f} | {w:.2f} |" for (label, _, _), c, w in zip(PARTS, cold.parts, warm.parts)),
        f"| {OWN_WORK} | {cold.own_s:.2f} | {warm.own_s:.2f} |",
        f"| **the round** (`server.jsonl`) | **{cold.round_s:.2f}** | **{warm.round_s:.2f}** |",
        "",
        FLOORS,
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("deployment", "## Deployment round latency (`benchmarks/deployment.py`)\n\n" + text)


if __name__ == "__main__":
    main()
