"""Faults of a real deployment on loopback (a SuperLink and SuperNodes as separate processes).

* A SuperNode killed in the middle of a round and restarted: the round completes with the reply that
  came, the failure names the silent node, and the restarted SuperNode (a new node id, the same
  partition and state directory) trains in the next round from the private heads it saved before it
  died. The same scenario in process, with both ways the server maps nodes: ``tests/test_node_rejoin.py``.
* The ServerApp killed in the middle of a round and the run launched again with ``resume-dir``: it
  continues from its last checkpoint, the SuperNodes from the heads they saved, and the finished run
  equals one that was never interrupted.

Waits are events read from the ClientApps' timeline (``FEDMTL_TIMELINE``), not sleeps."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.files import read_rows
from fedmtl.core.timeline import TIMELINE_VAR
from fedmtl.local.state_store import ClientStateStore
from tests.deployment import (
    RUN_TIMEOUT_S,
    TINY_2,
    Federation,
    assert_complete_run,
    assert_stopped_cleanly,
    run_config_args,
    wait_until,
)
from tests.helpers import cmdline, federate_in_process, tagged_processes

DOOMED = "FEDMTL_TEST_DOOMED"  # marks the SuperNode to kill, and everything it spawns
ROUNDS = (
    *TINY_2,
    "rounds=3",
    "eval_every=3",
    "faults.client_delay_s=2",  # every training call waits 2 s first: the window in which one is killed
)
# a round waits this long for replies: the round with the dead node ends here; it must also cover a cold
# SuperNode's first ClientApp (FAB installed, torch imported: 20 s on a loaded 2-core machine)
DEAD_NODE_TIMEOUT = "server.round_timeout_s=45"
RESUMED = (*ROUNDS, "server.round_timeout_s=120", "checkpoint.every=1")  # no node dies there


def steps(timeline: Path) -> list[dict]:
    return [json.loads(line) for line in timeline.read_text().splitlines()] if timeline.exists() else []


def kill_marked(marker: str) -> int:
    """SIGKILL every process whose environment carries ``DOOMED=marker`` (a crash, not a shutdown)."""
    killed = 0
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and f"{DOOMED}={marker}".encode() in Path(f"/proc/{entry}/environ").read_bytes():
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
    return killed


def serverapp_pids(tag: str) -> list[int]:
    return [pid for pid in tagged_processes(tag) if "flwr-serverapp" in cmdline(pid)]


def lose_a_supernode(root: Path) -> SimpleNamespace:
    """Kill supernode-1 while its ClientApp waits to train round 2, then start it again."""
    fed = Federation(root / "fed")
    before, after = root / "before.jsonl", root / "after.jsonl"  # supernode-1's timelines
    marker = uuid.uuid4().hex
    try:
        fed.start_superlink()
        fed.wait_superlink()
        fed.start_supernode("supernode-0", 0, 2)
        fed.start_supernode("supernode-1", 1, 2, **{TIMELINE_VAR: str(before), DOOMED: marker})
        fed.wait_supernodes(2)
        run = fed.launch(run_config_args(fed.root / "run", overrides=(*ROUNDS, DEAD_NODE_TIMEOUT)))

        def training_round_2() -> bool:
            assert run.running(), run.procs.log(run.name)[-3000:]
            return any(s["step"] == "clientapp_handler" and s["round"] == 2 for s in steps(before))

        wait_until(training_round_2, RUN_TIMEOUT_S, "supernode-1's ClientApp in round 2", lambda: str(steps(before)))
        assert kill_marked(marker) >= 1
        fed.start_supernode("supernode-1b", 1, 2, **{TIMELINE_VAR: str(after)})  # same partition and state dir
        outcome = run.outcome()
    finally:
        assert_stopped_cleanly(fed.procs)
    return SimpleNamespace(fed=fed, outcome=outcome, after=after)


def kill_the_serverapp(root: Path) -> SimpleNamespace:
    """Kill the ServerApp once both replies of round 2 are back, then launch the run again with resume-dir."""
    fed = Federation(root / "fed")
    timeline = root / "timeline.jsonl"
    try:
        fed.start_superlink()
        fed.wait_superlink()
        for i in range(2):
            fed.start_supernode(f"supernode-{i}", i, 2, **{TIMELINE_VAR: str(timeline)})
        fed.wait_supernodes(2)
        first = fed.launch(run_config_args(fed.root / "run", overrides=RESUMED))

        def round_2_trained() -> bool:  # both replies of round 2 handed back: the server is about to aggregate
            assert first.running(), first.procs.log(first.name)[-3000:]
            return sum(s["step"] == "clientapp_reply" and s["round"] == 2 for s in steps(timeline)) == 2

        wait_until(round_2_trained, RUN_TIMEOUT_S, "both replies of round 2", lambda: str(steps(timeline)))
        killed = serverapp_pids(fed.procs.tag)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        assert killed, "no ServerApp process found"
        os.kill(fed.procs.started[first.name].pid, signal.SIGKILL)  # the CLI would stream the dead run's logs
        done = [r["round"] for r in read_rows(fed.root / "run" / "server.jsonl")]  # rounds written when killed
        resume = ["--run-config", f"resume-dir='{fed.root / 'run'}'"]
        resumed = fed.launch([*run_config_args(fed.root / "run", overrides=RESUMED), *resume], name="flwr-run-resumed")
        outcome = resumed.outcome()
    finally:
        assert_stopped_cleanly(fed.procs)
    return SimpleNamespace(fed=fed, outcome=outcome, done=done)


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> Iterator[dict[str, Future]]:
    """Both scenarios side by side, each on its own SuperLink and SuperNodes: they mostly wait."""
    with ThreadPoolExecutor(2) as pool:
        yield {
            "supernode": pool.submit(lose_a_supernode, tmp_path_factory.mktemp("supernode")),
            "serverapp": pool.submit(kill_the_serverapp, tmp_path_factory.mktemp("serverapp")),
        }


@pytest.mark.slow
def test_a_supernode_killed_mid_round_fails_the_round_and_its_restart_trains_with_its_heads(scenarios):
    found = scenarios["supernode"].result()
    fed, outcome = found.fed, found.outcome
    assert outcome.returncode == 0 and outcome.status.get("status") == "finished:completed", outcome.explain()
    rows = {r["round"]: r for r in read_rows(fed.root / "run" / "server.jsonl")}
    assert sorted(rows) == [1, 2, 3]
    assert rows[1]["failures"] == 0 and rows[3]["failures"] == 0 and rows[3]["replies"] == 2, rows
    # one failure for the dead node: its silence, or the SuperLink's word once its heartbeats stopped
    [failed] = rows[2]["failed"]
    assert rows[2]["failures"] == 1 and ("within 45 s" in failed or ": Error: Node Unavailable" in failed), rows[2]
    trained = {
        (r["round"], r["client"]) for r in read_rows(fed.root / "run" / "metrics.jsonl") if r["split"] == "train"
    }
    assert {(1, 0), (1, 1), (2, 0), (3, 0), (3, 1)} <= trained and (2, 1) not in trained
    # the restarted SuperNode's first training began from the heads saved after round 1
    restored = [s for s in steps(found.after) if s["step"] == "state_restored"]
    assert [(s["participant"], s["version"]) for s in restored] == [("client-1", 1)], steps(found.after)
    # its messages went through one warm host (clients.deployed_app): one handler process, not the ClientApps'
    handlers = {s["pid"] for s in steps(found.after) if s["step"] == "clientapp_handler"}
    entries = {s["pid"] for s in steps(found.after) if s["step"] == "clientapp_entry"}
    assert len(handlers) == 1 and len(entries) >= 2 and not handlers & entries, steps(found.after)
    assert ClientStateStore(fed.state_dir, 1).versions()[-1] == 3


@pytest.mark.slow
def test_a_serverapp_killed_mid_round_resumes_from_its_checkpoint_and_finishes_as_if_uninterrupted(scenarios, tmp_path):
    found = scenarios["serverapp"].result()
    run_dir = found.fed.root / "run"
    reference = tmp_path / "uninterrupted"
    federate_in_process(load_config(None, [*RESUMED, f"output.run_dir={reference}"]))
    assert_complete_run(found.outcome, run_dir)
    assert read_rows(run_dir / "metrics.jsonl") == read_rows(reference / "metrics.jsonl"), found.done
    ours, theirs = (torch.load(d / "encoder.pt", weights_only=True) for d in (run_dir, reference))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
