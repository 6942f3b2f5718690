"""How the simulation scales with the number of clients: peak memory and time on one small machine.

For each N in ``--clients`` (default 50 200 500; ``--quick``: 20 50) this runs ``simulate.py`` as a
subprocess with the default small model, ``server.fraction_fit`` clients trained per round and
evaluation only in the last round (plus round 0), and one variant at the largest N with
``server.fraction_evaluate=0.1``:

    python benchmarks/scale.py [--quick | --clients 50 200 500] [--rounds 4] [--set key.path=value ...] [--no-write]

While a run goes on, the resident memory of simulate.py and every process below it (Ray's
gcs_server, raylet, agents and workers) is read from ``/proc`` every ``--interval`` seconds.
Reported per run: peak summed RSS and PSS of the tree (RSS counts shared pages, e.g. torch's
libraries, once per process; PSS splits them), the driver's own peak (``VmHWM``, exact), the
largest single process, CPU seconds per group of processes, seconds to the end of the round-0
evaluation and of round 1 (start-up includes Python imports and Ray), per-round seconds from the
run's ``server.jsonl`` and the last round's evaluation alone. Writes the tables, a memory model
and a time model to BENCHMARKS.md. Every process started here is stopped on exit,
Ctrl-C or error. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_info, write_section  # noqa: E402
from fedmtl.core.files import read_rows  # noqa: E402
from fedmtl.core.layout import CLIENTS_FILE, SERVER_FILE  # noqa: E402
from fedmtl.local.data import DATA_CACHE_BYTES  # noqa: E402
from fedmtl.runfiles.rundir import RunDirectory  # noqa: E402

PAGE_BYTES, CLOCK_TICKS = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
GIB, MIB = 2**30, 2**20
DRIVER, WORKERS, RAY_SYSTEM = "driver (simulate.py)", "Ray workers", "Ray system"
ACTOR_TITLES = ("ray::ClientAppActor", "ray::ClientWorker")  # Flower's engine, the direct engine


# --- /proc ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    start_ticks: int  # start time since boot: tells a process from a later one with the same pid
    rss_bytes: int
    cpu_seconds: float  # user + system time so far


def read_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or not ours to read
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return ProcStat(int(fields[1]), int(fields[19]), int(fields[21]) * PAGE_BYTES, cpu)


def process_table() -> dict[int, ProcStat]:
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := read_stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    return table


def descendants(root: int, table: dict[int, ProcStat]) -> list[int]:
    """``root`` and every process below it (Ray's raylet re-parents nothing: workers are its children)."""
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    found, todo = [], [root] if root in table else []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def status_kib(pid: int, key: str, file: str = "status") -> int | None:
    """A ``key: N kB`` line of /proc/<pid>/status (or smaps_rollup), in bytes."""
    return status_kib_in(Path(f"/proc/{pid}/{file}"), key)


def status_kib_in(path: Path, key: str) -> int | None:
    """A ``key: N kB`` line of a /proc file, in bytes; None when the file or the key is missing."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def label_of(pid: int) -> str:
    """``ray::ClientAppActor``, ``raylet``, ``gcs_server``, the script a Python process runs, ..."""
    try:
        args = [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return "?"
    if not args:
        return "?"
    if args[0].startswith("ray::"):
        return args[0].split()[0]
    scripts = [Path(a).name for a in args[:4] if a.endswith(".py")]
    return scripts[-1] if scripts else Path(args[0]).name


def group_of(label: str, is_root: bool) -> str:
    if is_root:
        return DRIVER
    worker = label.startswith(ACTOR_TITLES) or label == "ray::IDLE" or label.endswith("worker.py")
    return WORKERS if worker else RAY_SYSTEM  # gcs_server, raylet, dashboard, monitors, ray::*Agent


def meminfo(key: str) -> int:
    """A ``key: N kB`` line of /proc/meminfo, in bytes (0 when absent)."""
    return status_kib_in(Path("/proc/meminfo"), key) or 0


def flwr_version() -> str:
    from importlib.metadata import version

    return ".".join(version("flwr").split(".")[:2])


def mem_available() -> int:
    return meminfo("MemAvailable")


# --- one run -------------------------------------------------------------------------------------


@dataclass
class Sampled:
    """What the /proc sampler saw during one run."""

    peak_rss: int = 0
    peak_pss: int = 0
    peak_group_rss: dict[str, int] = field(default_factory=dict)
    driver_hwm: int = 0  # the driver's own VmHWM (exact peak, not sampled)
    driver_rss_at: dict[str, int] = field(default_factory=dict)  # driver RSS at named moments
    peak_by_pid: dict[int, tuple[int, str]] = field(default_factory=dict)  # pid -> (peak RSS, label)
    cpu_by_pid: dict[int, tuple[float, str]] = field(default_factory=dict)  # pid -> (CPU seconds at last look, group)
    max_actors: int = 0
    min_mem_available: int = 0
    events: dict[str, float] = field(default_factory=dict)  # seconds since launch
    seen: dict[int, int] = field(default_factory=dict)  # pid -> start ticks, for the clean-up
    last_pss: float = float("-inf")  # when PSS was last read (monotonic seconds)
    sampling_cpu: float = 0.0  # CPU seconds the sampler itself spent reading /proc
    killed_after: int = 0  # processes of the tree still alive after simulate.py ended, killed here
    ray_left: int = 0  # raylet / gcs_server of this run's Ray session found after the clean-up

    def largest(self) -> tuple[int, str]:
        return max(self.peak_by_pid.values(), default=(0, "?"))

    def cpu(self, group: str) -> float:
        """CPU seconds used by a group's processes (up to the last sample that saw each)."""
        return sum(seconds for seconds, g in self.cpu_by_pid.values() if g == group)


@dataclass(frozen=True)
class RunResult:
    clients: int
    fraction_evaluate: float
    trained: int  # K: clients per training round
    evaluated: int  # clients per evaluation
    load_at_start: float
    sampled: Sampled
    round_seconds: dict[int, float]
    eval_rounds: set[int]
    first_round_done: float  # seconds since launch
    last_round_split: tuple[float, float] | None  # last round: (training + aggregation, evaluation) seconds
    wall: float
    private_state_bytes: int  # one private state file (one client, one round)
    client_state_bytes: int  # all clients' state files on disk

    def warm_up(self) -> float:
        return self.round_seconds[1]

    def train_only(self) -> float | None:
        """Median of the training-only rounds after round 1 (round 1 pays the workers' first training)."""
        values = [s for r, s in self.round_seconds.items() if r > 1 and r not in self.eval_rounds]
        return statistics.median(values) if values else None

    def eval_cost(self) -> float | None:
        return None if self.last_round_split is None else self.last_round_split[1]


def sample_once(root: int, sampled: Sampled, launched: float) -> None:
    """One look at the tree. PSS (slow to read: the kernel walks every mapping) only when the summed RSS
    is within 2% of its peak so far, at most once a second: that is where the PSS peak is."""
    tick, cpu = time.monotonic(), time.process_time()
    table = process_table()
    tree = descendants(root, table)
    rss = actors = 0
    groups: dict[str, int] = {}
    for pid in tree:
        stat = table[pid]
        sampled.seen.setdefault(pid, stat.start_ticks)
        label = label_of(pid)
        if label == "?" and pid in sampled.peak_by_pid:  # exiting: no cmdline any more
            label = sampled.peak_by_pid[pid][1]
        group = group_of(label, pid == root)
        rss += stat.rss_bytes
        groups[group] = groups.get(group, 0) + stat.rss_bytes
        actors += label in ACTOR_TITLES
        sampled.cpu_by_pid[pid] = (stat.cpu_seconds, group)
        if stat.rss_bytes > sampled.peak_by_pid.get(pid, (0, ""))[0]:
            sampled.peak_by_pid[pid] = (stat.rss_bytes, label)
        if label == "raylet":
            sampled.events.setdefault("raylet", tick - launched)
    if rss >= 0.98 * sampled.peak_rss and tick - sampled.last_pss >= 1.0:
        sampled.last_pss = tick
        sampled.peak_pss = max(sampled.peak_pss, sum(status_kib(pid, "Pss", "smaps_rollup") or 0 for pid in tree))
    sampled.peak_rss = max(sampled.peak_rss, rss)
    for group, value in groups.items():
        sampled.peak_group_rss[group] = max(sampled.peak_group_rss.get(group, 0), value)
    sampled.driver_hwm = max(sampled.driver_hwm, status_kib(root, "VmHWM") or 0)
    if root in table:
        sampled.driver_rss_at["last"] = table[root].rss_bytes
        if "raylet" not in sampled.events:  # Python, torch and Flower imported, config parsed
            sampled.driver_rss_at["before Ray"] = table[root].rss_bytes
    sampled.max_actors = max(sampled.max_actors, actors)
    available = mem_available()
    sampled.min_mem_available = min(sampled.min_mem_available or available, available)
    sampled.sampling_cpu += time.process_time() - cpu


def alive(pid: int, start_ticks: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.start_ticks == start_ticks


def ray_processes_of(driver_pid: int) -> list[int]:
    """raylet / gcs_server of the Ray session that ``driver_pid`` started (session names end in its pid)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            args = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if ("/raylet" in args or "/gcs_server" in args) and f"_{driver_pid}/" in args:
            found.append(int(entry.name))
    return found


def stop(proc: subprocess.Popen, sampled: Sampled) -> None:
    """Stop simulate.py's process group (SIGINT first, so that it shuts Ray down itself), then every
    process of its tree still alive 15 s later (e.g. one that left the group or was re-parented)."""
    for sig, grace in ((signal.SIGINT, 20.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
    others = {pid: ticks for pid, ticks in sampled.seen.items() if pid != proc.pid}
    deadline = time.monotonic() + 15.0  # Ray's processes exit on their own shortly after the driver
    while time.monotonic() < deadline and any(alive(p, t) for p, t in others.items()):
        time.sleep(0.5)
    for pid, start_ticks in others.items():
        if alive(pid, start_ticks):
            try:
                os.kill(pid, signal.SIGKILL)
                sampled.killed_after += 1
            except ProcessLookupError:
                pass
    sampled.ray_left = len(ray_processes_of(proc.pid))


def _default_sigint() -> None:
    """In the child: SIGINT must end simulate.py through its KeyboardInterrupt path (which shuts Ray
    down), even when this script was started with SIGINT ignored (e.g. ``cmd &`` in a script)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def launched(command: list[str], log: Path) -> Iterator[tuple[subprocess.Popen, Sampled]]:
    sampled = Sampled()
    # A local run must start its own Ray instance: without an address, ray.init() attaches to the
    # cluster recorded in /tmp/ray/ray_current_cluster (any `ray start` on this machine, even a dead one).
    env = {**os.environ, "RAY_ADDRESS": os.environ.get("RAY_ADDRESS") or "local"}
    with log.open("w") as out:  # own session: a Ctrl-C here reaches it only through `stop`
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_default_sigint,
        )  # fmt: skip
    try:
        yield proc, sampled
    finally:
        stop(proc, sampled)


def wait_for_quiet(max_load: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until the 1-minute load average drops below ``max_load``; return it."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5.0)
    return os.getloadavg()[0]


def run_one(clients: int, fraction_evaluate: float, args: argparse.Namespace) -> RunResult:
    load = wait_for_quiet(args.max_load, args.max_wait)
    with tempfile.TemporaryDirectory(prefix="fedmtl-scale-") as tmp:
        run_dir, log = Path(tmp) / "run", Path(tmp) / "simulate.log"
        command = [sys.executable, "simulate.py"]
        for setting in settings(clients, fraction_evaluate, args) + [f"output.run_dir={run_dir}"]:
            command += ["--set", setting]
        print(f"scale: {clients} clients, fraction_evaluate {fraction_evaluate:g} (load {load:.1f}) ...", flush=True)
        start, start_epoch = time.monotonic(), time.time()
        with launched(command, log) as (proc, sampled):
            metrics, clients_file = RunDirectory(run_dir).metrics_path, run_dir / CLIENTS_FILE  # default metrics format
            client_rows_seen: list[tuple[float, int]] = []  # (seconds since launch, size) when clients.jsonl grew
            while proc.poll() is None:
                tick = time.monotonic()
                if tick - start > args.timeout:
                    raise SystemExit(f"simulate.py ran past --timeout {args.timeout:g} s at {clients} clients; stopped")
                sample_once(proc.pid, sampled, start)
                if "round-0 eval done" not in sampled.events and metrics.exists() and metrics.stat().st_size:
                    sampled.events["round-0 eval done"] = tick - start
                    sampled.driver_rss_at["after round 0"] = sampled.driver_rss_at.get("last", 0)
                size = clients_file.stat().st_size if clients_file.exists() else 0
                if size and (not client_rows_seen or size != client_rows_seen[-1][1]):
                    client_rows_seen.append((tick - start, size))
                time.sleep(max(0.0, args.interval - (time.monotonic() - tick)))
            wall = time.monotonic() - start
        if proc.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise SystemExit(f"simulate.py exited with {proc.returncode} at {clients} clients:\n{tail}")
        server, rows = read_rows(run_dir / SERVER_FILE), read_rows(metrics)
        eval_rows = [row for row in rows if row["split"] == "eval"]
        last_eval = max(row["round"] for row in eval_rows)
        states = sorted((run_dir / "client_state").rglob("*.pt"))
        last = server[-1]
        return RunResult(
            clients=clients,
            fraction_evaluate=fraction_evaluate,
            trained=len(server[0]["clients"]),
            evaluated=len({row["client"] for row in eval_rows if row["round"] == last_eval}),
            load_at_start=load,
            sampled=sampled,
            round_seconds={row["round"]: row["seconds"] for row in server},
            eval_rounds={row["round"] for row in eval_rows} - {0},
            first_round_done=server[0]["started_at"] + server[0]["seconds"] - start_epoch,
            last_round_split=split_last_round(last, client_rows_seen, clients_file.stat().st_size, start_epoch),
            wall=wall,
            private_state_bytes=states[-1].stat().st_size if states else 0,
            client_state_bytes=sum(p.stat().st_size for p in states),
        )


def split_last_round(
    last: dict, client_rows_seen: list[tuple[float, int]], final_size: int, start_epoch: float
) -> tuple[float, float] | None:
    """(training + aggregation, evaluation) seconds of the last round. The server appends the round's
    training reports to clients.jsonl before it aggregates and evaluates, and its row in server.jsonl
    after evaluating: the evaluation is the time from the first sample that saw clients.jsonl at its
    final size to the round's end (at most one sampling interval short)."""
    seen = next((t for t, size in client_rows_seen if size >= final_size), None)
    if seen is None:
        return None
    training = start_epoch + seen - last["started_at"]
    return training, last["seconds"] - training


def settings(clients: int, fraction_evaluate: float, args: argparse.Namespace) -> list[str]:
    return [
        f"clients.count={clients}", f"server.fraction_fit={args.fraction_fit}",
        f"server.fraction_evaluate={fraction_evaluate}", f"rounds={args.rounds}", f"eval_every={args.rounds}",
        *args.set,
    ]  # fmt: skip


def shared_params(args: argparse.Namespace) -> int:
    """P: parameters of the shared encoder (what each client uploads)."""
    from fedmtl.config.loading import load_config
    from fedmtl.model.networks import initial_shared_state

    cfg = load_config(None, settings(max(args.clients), 1.0, args))
    state = initial_shared_state(cfg.model, cfg.data.feature_dim(), cfg.seed, cfg.data.image_shape())
    return sum(t.numel() for t in state.values())  # already only what the sharing mode federates


# --- report --------------------------------------------------------------------------------------


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def mib(n: float) -> str:
    return f"{n / MIB:.0f}"


def secs(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def name(result: RunResult) -> str:
    return f"{result.clients}" + (
        f" (fraction_evaluate {result.fraction_evaluate:g})" if result.fraction_evaluate < 1 else ""
    )


def memory_table(results: list[RunResult]) -> str:
    lines = [
        "| clients N | trained K / evaluated | Ray workers | peak RSS, tree (GiB) | peak PSS, tree (GiB) "
        "| driver RSS (MiB): before Ray / after round 0 / peak "
        "| Ray workers peak RSS (MiB) | Ray system peak RSS (MiB) | largest process (MiB) | private state on disk (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.sampled
        driver = (
            " / ".join(mib(s.driver_rss_at.get(k, 0)) for k in ("before Ray", "after round 0"))
            + f" / {mib(s.driver_hwm)}"
        )
        size, label = s.largest()
        lines.append(
            f"| {name(r)} | {r.trained} / {r.evaluated} | {s.max_actors} | {gib(s.peak_rss)} | {gib(s.peak_pss)} | "
            f"{driver} | {mib(s.peak_group_rss.get(WORKERS, 0))} | {mib(s.peak_group_rss.get(RAY_SYSTEM, 0))} | "
            f"{mib(size)} (`{label}`) | {r.client_state_bytes / MIB:.1f} |"
        )
    return "\n".join(lines)


def time_table(results: list[RunResult]) -> str:
    lines = [
        "| clients N | load at start | Ray up (s) | round-0 eval done (s) | round 1 done (s) | round 1 (s) "
        "| training-only rounds 2.. (s, median) | last round: training / evaluation (s) | evaluation per evaluated "
        "client (ms) | CPU s: driver / Ray workers / Ray system | total wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e, s = r.sampled.events, r.sampled
        split = "–" if r.last_round_split is None else " / ".join(f"{v:.1f}" for v in r.last_round_split)
        cost = r.eval_cost()
        per_client = "–" if cost is None else f"{1000 * cost / r.evaluated:.0f}"
        cpu = " / ".join(f"{s.cpu(group):.0f}" for group in (DRIVER, WORKERS, RAY_SYSTEM))
        lines.append(
            f"| {name(r)} | {r.load_at_start:.1f} | {secs(e.get('raylet'))} | {secs(e.get('round-0 eval done'))} | "
            f"{secs(r.first_round_done)} | {secs(r.warm_up())} | {secs(r.train_only())} | {split} | {per_client} | "
            f"{cpu} | {r.wall:.1f} |"
        )
    return "\n".join(lines)


def polling_pass_seconds(nodes: int, messages: int) -> float:
    """Seconds of one pass of Flower's simulation-engine poller (``add_messages_to_queue``: one
    ``get_message_ins(node, limit=1)`` per node) over an in-memory SuperLink holding ``messages``
    delivered-but-unanswered messages, as during an evaluation; built with Flower 1.41's own classes."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = cast(InMemoryLinkState, factory.state())  # the in-memory state, as Flower's simulation uses it
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    node_ids = list(_register_nodes(nodes, factory))
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run.run_id, run.primary_task_id, SUPERLINK_NODE_ID
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    content = RecordDict({"config": ConfigRecord({"round": 1})})
    grid.push_messages(
        [Message(content, message_type=MessageType.EVALUATE, dst_node_id=n) for n in node_ids[:messages]]
    )
    for node in node_ids:  # the first pass delivers every message; they stay stored until answered
        state.get_message_ins(node_id=node, limit=1)
    start = time.perf_counter()
    for node in node_ids:
        state.get_message_ins(node_id=node, limit=1)
    return time.perf_counter() - start


def time_model(results: list[RunResult], polling: dict[tuple[int, int], float]) -> str:
    full = sorted((r for r in results if r.fraction_evaluate == 1.0), key=lambda r: r.clients)
    small, large = full[0], full[-1]
    variant = next((r for r in results if r.fraction_evaluate < 1.0), None)
    per_client = {id(r): 1000 * cost / r.evaluated for r in results if (cost := r.eval_cost()) is not None}
    listed = ", ".join(
        f"{per_client[id(r)]:.0f} ms at N={r.clients} ({r.evaluated} evaluated)" for r in results if id(r) in per_client
    )
    text = f"**Time model.** Evaluation time per evaluated client: {listed}."
    if id(small) in per_client and id(large) in per_client:
        ratio = per_client[id(large)] / per_client[id(small)]
        text += f" From N={small.clients} to N={large.clients} it changed by a factor {ratio:.1f}" + (
            ": it grows with N."
            if ratio > 1.3
            else ", so evaluation time is about proportional to the clients evaluated."
        )
    if variant is not None and variant.eval_cost() is not None and large.eval_cost() is not None:
        text += (
            f" `server.fraction_evaluate={variant.fraction_evaluate:g}` at N={variant.clients} cut the last evaluation "
            f"from {large.eval_cost():.1f} s ({large.evaluated} clients) to {variant.eval_cost():.1f} s "
            f"({variant.evaluated} clients)."
        )
    passes = "; ".join(f"N={n} with {m} messages: {seconds:.3f} s" for (n, m), seconds in sorted(polling.items()))
    text += (
        f" What grows with N in any case is the driver's work: Flower {flwr_version()}'s simulation engine polls every node every 0.1 s "
        "(`add_messages_to_queue`, `flwr/server/superlink/fleet/vce/vce_api.py`) and each poll scans every stored "
        "message, delivered or not (`InMemoryLinkState.get_message_ins`), O(N x messages in flight) per pass. One "
        f"pass, timed here on Flower's own classes: {passes} (a pass longer than the 0.1 s interval means the "
        f"poller never rests). The driver used {small.sampled.cpu(DRIVER):.0f} CPU s in {small.wall:.0f} s at N={small.clients} and "
        f"{large.sampled.cpu(DRIVER):.0f} CPU s in {large.wall:.0f} s at N={large.clients}, on a machine whose "
        f"{os.cpu_count()} cores the workers need. Start-up grows with N as well: with sampling, `server/loop.py` "
        "(`identify_clients`) sends a query to all N clients before round 0, one Ray call each."
    )
    if variant is not None and variant.evaluated == small.evaluated:
        before, after = (r.sampled.events.get("round-0 eval done") for r in (small, variant))
        if before is not None and after is not None:
            text += (
                f" With the same {small.evaluated} clients evaluated at round 0, the round-0 evaluation was written "
                f"{before:.1f} s after launch at N={small.clients} and {after:.1f} s at N={variant.clients} (load at "
                f"start {small.load_at_start:.1f} and {variant.load_at_start:.1f}): "
                f"{1000 * (after - before) / (variant.clients - small.clients):.0f} ms per further client."
            )
    ram = os.sysconf("SC_PHYS_PAGES") * PAGE_BYTES
    return text + (
        f" At these sizes memory is far from the limit (peak PSS {gib(large.sampled.peak_pss)} GiB of "
        f"{ram / GIB:.0f} GiB at N={large.clients}); what grows with N is time."
    )


def memory_model(results: list[RunResult], p: int) -> str:
    full = sorted((r for r in results if r.fraction_evaluate == 1.0), key=lambda r: r.clients)
    small, large = full[0], full[-1]
    per_client = (large.sampled.driver_hwm - small.sampled.driver_hwm) / max(1, large.clients - small.clients)
    workers = large.sampled.peak_group_rss.get(WORKERS, 0) / max(1, large.sampled.max_actors)
    k = large.trained
    return (
        "**Memory model.** Three parts, of which only the first depends on the number of clients N. "
        "(1) *Driver* (simulate.py: ServerApp, Flower's in-memory SuperLink and simulation engine). Flower keeps one "
        "`Context` per node for the whole run (`DeprecatedRunInfoStore`, `flwr/server/superlink/fleet/vce/vce_api.py`) "
        "and `clients/client_app.py` puts each client's private state into it (`context.state`: heads, balancer and "
        f"personal state; {large.private_state_bytes / 1024:.1f} KiB per client as a file here), so it grows with the "
        "clients that have trained so far; the run summary keeps running example-weighted sums per (split, task, "
        "evaluation round) and the client ids per task (`EvalCurves`, `fedmtl/runfiles/summary.py`), not the evaluation rows. Measured: the driver's "
        f"peak RSS went from {mib(small.sampled.driver_hwm)} MiB at N={small.clients} to {mib(large.sampled.driver_hwm)} "
        f"MiB at N={large.clients}, {per_client / 1024:.0f} KiB per added client (this includes the larger sample K and "
        "more messages in flight, not only per-client state); most of the driver is Python, torch, Flower and Ray "
        f"imported before Ray starts ({mib(large.sampled.driver_rss_at.get('before Ray', 0))} MiB). On disk, each "
        f"client that has trained keeps its private state file (`client_state/`, {large.client_state_bytes / MIB:.1f} "
        f"MiB at N={large.clients} after {len(large.round_seconds)} rounds). Client data is never held by the "
        "driver: a Ray worker generates a client's data when that client is called (`fedmtl/local/client.py`, "
        f"`client_data` -> `SyntheticSuite.client_data`) and keeps recently used clients' data in an LRU cache of at most "
        f"{DATA_CACHE_BYTES / MIB:.0f} MiB of tensors per worker (`DATA_CACHE_BYTES`), so worker memory is bounded and does not grow with N. "
        "(2) *Parameters P and sampled clients K*: per round the server holds the K replies, their state dicts and the "
        "K x P float32 update matrix (`fedmtl/federation/server_update.py`, `ServerUpdater.step`), plus the O(K^2) Gramian and "
        f"cosines of the diagnostics (`diagnose`); here P = {p:,} and K = {k}, {k * p * 4 / MIB:.1f} MiB per copy, "
        f"invisible next to the interpreters. At P = 1e6 and K = 50 one copy is {50 * 10**6 * 4 / MIB:.0f} MiB and a round "
        "holds up to four (reply bytes, state dicts, flattened rows, the stacked matrix; counted from the code, not "
        "measured), in the driver. "
        f"(3) *Fixed*: {large.sampled.max_actors} Ray worker actors (`resources.num_cpus / resources.client_cpus`), each "
        f"a Python process with torch imported, about {mib(workers)} MiB RSS each, plus Ray's gcs_server, raylet and "
        f"agents ({mib(large.sampled.peak_group_rss.get(RAY_SYSTEM, 0))} MiB together). RSS counts shared library pages "
        "once per process; PSS (shared pages split between the processes that map them) is the better estimate of what "
        f"the run costs the machine: {gib(large.sampled.peak_pss)} GiB at N={large.clients}."
    )


def report(
    results: list[RunResult], args: argparse.Namespace, load: float, p: int, polling: dict[tuple[int, int], float]
) -> str:
    killed = sum(r.sampled.killed_after for r in results)
    ray_left = sum(r.sampled.ray_left for r in results)
    min_available = min(r.sampled.min_mem_available for r in results)
    sampler = sum(r.sampled.sampling_cpu for r in results) / sum(r.wall for r in results)
    command = "python benchmarks/scale.py" + (
        " --quick" if args.quick else f" --clients {' '.join(map(str, args.clients))}"
    )
    return "\n".join(
        [
            f"Command: `{command}`. Each run: `simulate.py` with the default model (a {p:,}-parameter shared MLP "
            f"encoder, private heads), `server.fraction_fit={args.fraction_fit:g}`, {args.rounds} rounds, evaluation "
            f"at round 0 and round {args.rounds} only (`eval_every={args.rounds}`), checkpoints every round (default); "
            f"plus one run at the largest N with `server.fraction_evaluate={args.variant_fraction_evaluate:g}`. "
            f"Machine: {machine_info()}, {os.sysconf('SC_PHYS_PAGES') * PAGE_BYTES / GIB:.0f} GiB RAM, "
            f"{meminfo('SwapTotal') / GIB:.0f} GiB swap. "
            f"The machine is shared with other work: 1-minute load average {load:.1f} at the start (each run waits up to "
            f"{args.max_wait:g} s for it to fall below {args.max_load:g}; the load it started at is in the table); "
            "timings are inflated and scattered by that, memory figures much less.",
            "",
            f"Memory, sampled every {args.interval:g} s over simulate.py and all its descendants (RSS from "
            f"`/proc/<pid>/stat`, PSS from `smaps_rollup`, read near the RSS peak); the driver's peak is its exact "
            "`VmHWM`. Ray workers: the `ray::ClientAppActor` processes; Ray system: gcs_server, raylet, dashboard, "
            "monitors and agents.",
            "",
            memory_table(results),
            "",
            "Time: seconds since simulate.py was launched until Ray's raylet appeared, until the round-0 evaluation was "
            "written (Python and torch imports, Ray start, worker start-up, identification of all N clients when "
            "sampling, round-0 evaluation), and until round 1 ended; then per round from the run's `server.jsonl` "
            "(`seconds`: training, aggregation and, in the last round, evaluation). Round 1 is shown alone (the "
            "workers' first training). The last round is split where its training reports reached `clients.jsonl` "
            f"(seen by the sampler, so the evaluation is up to {args.interval:g} s short); the round-0 evaluation has no "
            "timer of its own. CPU seconds: user + system time of each process until the last sample that saw it.",
            "",
            time_table(results),
            "",
            memory_model(results, p),
            "",
            time_model(results, polling),
            "",
            f"Lowest MemAvailable of the whole machine during the runs: {gib(min_available)} GiB. The sampler itself "
            f"used {100 * sampler:.0f}% of one core. Processes of a run still alive 15 s after simulate.py ended "
            f"(killed here): {killed}; raylet/gcs_server of the runs' Ray sessions left afterwards: {ray_left}.",
        ]
    )


def add_run_arguments(parser: argparse.ArgumentParser, max_wait: float) -> None:
    """The options :func:`run_one` reads, shared with ``benchmarks/engines.py``."""
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between memory samples")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-minute load to fall below this")
    parser.add_argument("--max-wait", type=float, default=max_wait, help="... but at most this many seconds per run")
    parser.add_argument("--timeout", type=float, default=900.0, help="stop a run after this many seconds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="passed to every run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200, 500], metavar="N")
    parser.add_argument("--quick", action="store_true", help="N in {20, 50}")
    parser.add_argument("--rounds", type=int, default=4, help="evaluation at round 0 and in the last round")
    parser.add_argument("--fraction-fit", type=float, default=0.1)
    parser.add_argument("--variant-fraction-evaluate", type=float, default=0.1,
                        help="one more run at the largest N with this server.fraction_evaluate (0: none)")  # fmt: skip
    add_run_arguments(parser, max_wait=300.0)
    args = parser.parse_args()
    if args.quick:
        args.clients = [20, 50]
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (round 1 warms up; later training-only rounds are compared with the last)")
    if min(args.clients) < 1 or args.interval <= 0:
        parser.error("--clients must be >= 1 and --interval > 0")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # so that `launched` stops the runs on kill as on Ctrl-C
    load = os.getloadavg()[0]
    p = shared_params(args)
    plan = [(n, 1.0) for n in sorted(set(args.clients))]
    if args.variant_fraction_evaluate:
        plan.append((max(args.clients), args.variant_fraction_evaluate))
    results = [run_one(n, fraction, args) for n, fraction in plan]
    polling = {(n, e): polling_pass_seconds(n, e) for n, e in {(r.clients, r.evaluated) for r in results}}
    text = report(results, args, load, p, polling)
    print(text)
    if not args.no_write:
        title = "## Scale: memory and time against the number of clients (`benchmarks/scale.py`)"
        write_section("scale", f"{title}\n\n{text}")


if __name__ == "__main__":
    main()
