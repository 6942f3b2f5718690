"""A SuperNode lost in the middle of a round, and one that restarts and rejoins, through the server's real
engine (``GridEngine``) and the real ClientApp, on an in-process grid that behaves as a deployment does:
the server does not place the nodes, a dead node stays listed and never answers, and a restarted
SuperNode comes back with a new node id, an empty context and the same state directory. The same
scenario with real processes is in ``tests/test_deployment_faults.py``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from fedmtl.core.files import read_rows
from fedmtl.driver.engine import EngineCapabilities
from fedmtl.local import state_store
from fedmtl.local.state_store import ClientStateStore
from server.engines.inprocess import InProcessGrid
from tests.helpers import tiny_overrides
from tests.loopback import LoopbackGrid, run_config, serve


class RestartingGrid(LoopbackGrid):
    """In the ``die_round``-th training exchange the node playing partition ``partition`` dies before it
    answers; a SuperNode with the same partition and state directory then starts with a new node id."""

    CAPABILITIES = EngineCapabilities(places_nodes=False, fixed_size=False)

    def __init__(self, config, nodes: int, state_dir: Path, die_round: int, partition: int) -> None:
        super().__init__(config, nodes, state_dir)
        self.die_round, self.partition = die_round, partition
        self.dead: set[int] = set()
        self.rejoined: int | None = None

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)  # the dead node too: a SuperLink lists it until its heartbeats time out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.trains += 1
        if self.trains == self.die_round and not self.dead:
            node = next(n for n, c in self.contexts.items() if c.node_config["partition-id"] == self.partition)
            self.dead.add(node)
            self.restart(node)
        alive = [m for m in messages if m.metadata.dst_node_id not in self.dead]
        return InProcessGrid.send_and_receive(self, alive, timeout=timeout)

    def restart(self, node: int) -> None:
        old = self.contexts[node]
        self.rejoined = max(self.contexts) + 1
        fresh = Context(old.run_id, self.rejoined, dict(old.node_config), RecordDict(), dict(old.run_config))
        self.contexts[self.rejoined] = fresh


@pytest.fixture
def loads(monkeypatch):
    """Every load of a client's saved state: (participant directory, version loaded)."""
    found: list[tuple[str, int]] = []
    real = state_store.ClientStateStore.load

    def spy(self, at_most_round):
        found.append((self.directory.name, self.newest(at_most_round)))
        return real(self, at_most_round)

    monkeypatch.setattr(state_store.ClientStateStore, "load", spy)
    return found


@pytest.mark.parametrize("fraction", ["1.0", "0.99"])  # any node for any participant; participants told apart
def test_a_node_lost_mid_round_is_a_failure_and_its_restart_trains_later_with_its_heads(tmp_path, loads, fraction):
    overrides = (*tiny_overrides(2), "rounds=3", "eval_every=3", f"server.fraction_fit={fraction}",
                 "server.round_timeout_s=5", f"output.run_dir={tmp_path / 'run'}")  # fmt: skip
    config = run_config(*overrides)
    grid = RestartingGrid(config, 2, tmp_path / "state", die_round=2, partition=1)
    serve(grid, config)
    rows = {r["round"]: r for r in read_rows(tmp_path / "run" / "server.jsonl")}
    [dead] = grid.dead
    assert rows[1]["failures"] == 0 and rows[3]["failures"] == 0 and rows[3]["replies"] == 2
    assert rows[2]["failures"] == 1 and len(rows[2]["failed"]) == 1
    assert "no reply from" in rows[2]["failed"][0] and f"node {dead} within 5 s" in rows[2]["failed"][0]
    trained = {
        (r["round"], r["client"]) for r in read_rows(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"
    }
    assert (2, 1) not in trained and {(3, 0), (3, 1)} <= trained  # the restarted node trained in round 3
    # it started from the heads client 1 saved after round 1, not from fresh ones
    assert loads == [("client-1", 1)]
    assert ClientStateStore(tmp_path / "state", 1).versions()[-1] == 3


class UnavailableGrid(RestartingGrid):
    """As :class:`RestartingGrid`, but a message to the dead node gets the reply a SuperLink makes once the
    node's heartbeats have stopped: an error from the SuperLink itself (``src_node_id`` is the SuperLink's)."""

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for message in (m for m in messages if m.metadata.dst_node_id in self.dead):
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the SuperLink set it when pushed
            reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, "Node Unavailable: no heartbeat"), reply_to=message)
            reply.metadata.__dict__.update(_src_node_id=SUPERLINK_NODE_ID, _dst_node_id=SUPERLINK_NODE_ID)
            replies.append(reply)
        return replies


def test_the_superlinks_reply_for_a_dead_node_is_that_nodes_one_failure(tmp_path):
    overrides = (*tiny_overrides(2), "rounds=3", "eval_every=3", f"output.run_dir={tmp_path / 'run'}")
    config = run_config(*overrides)
    grid = UnavailableGrid(config, 2, tmp_path / "state", die_round=2, partition=1)
    serve(grid, config)
    rows = {r["round"]: r for r in read_rows(tmp_path / "run" / "server.jsonl")}
    [dead] = grid.dead
    assert rows[2]["failures"] == 1 and rows[2]["failed"] == [f"node {dead}: Node Unavailable: no heartbeat"]
    assert rows[3]["failures"] == 0 and rows[3]["replies"] == 2


def test_a_store_serves_only_the_run_that_wrote_it(tmp_path):
    """A SuperNode's state directory outlives runs: another run neither loads nor keeps its versions."""
    import torch

    first = ClientStateStore(tmp_path, 0, "run-a")
    first.save(1, {"w": torch.ones(1)}, 0)
    first.save(2, {"w": torch.full((1,), 2.0)}, 0)
    assert first.load(5)["w"].item() == 2.0 and first.load(1)["w"].item() == 1.0
    second = ClientStateStore(tmp_path, 0, "run-b")
    assert second.load(5) is None  # the other run's heads are not this run's
    second.save(3, {"w": torch.zeros(1)}, 0)
    assert second.versions() == [3] and first.load(5) is None  # claimed: the old versions are gone
    assert ClientStateStore(tmp_path, 0).load(5)["w"].item() == 0.0  # no key: whatever is there


class StrangerGrid(RestartingGrid):
    """From the first training round on, a node is listed that never answers anything (another app's, or
    a broken one)."""

    def __init__(self, config, nodes: int, state_dir: Path) -> None:
        super().__init__(config, nodes, state_dir, die_round=-1, partition=-1)  # nobody dies
        self.stranger = max(self.contexts) + 1
        self.sent_to_stranger = 0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train" and self.stranger not in self.contexts:
            first = next(iter(self.contexts.values()))  # it appears while the first round trains
            self.contexts[self.stranger] = Context(first.run_id, self.stranger, {}, RecordDict(), {})
            self.dead.add(self.stranger)
        self.sent_to_stranger += sum(m.metadata.dst_node_id == self.stranger for m in messages)
        return super().send_and_receive(messages, timeout=timeout)


def test_a_new_node_that_never_answers_is_asked_once_and_costs_no_round(tmp_path):
    overrides = (*tiny_overrides(2), "rounds=3", "eval_every=1", "server.fraction_fit=0.99",
                 f"output.run_dir={tmp_path / 'run'}")  # fmt: skip
    config = run_config(*overrides)
    grid = StrangerGrid(config, 2, tmp_path / "state")
    serve(grid, config)
    rows = read_rows(tmp_path / "run" / "server.jsonl")
    assert [r["failures"] for r in rows] == [0, 0, 0] and grid.sent_to_stranger == 1
