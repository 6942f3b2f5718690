"""The ServerApp as ``flwr run`` and a deployment start it (config from the run config), without real
processes: the number of clients taken from the federation, a fast one-line failure when the run config
and the federation disagree, resuming a run directory (``resume-dir``), the short reply pulls against a
deployed SuperLink; plus one real ``flwr run`` on the local simulation federation (slow)."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.serverapp import Grid
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid
from flwr.superlink.grid.http_grid import HttpGrid

from clients.client_app import make_client_app
from fedmtl.config.errors import ConfigError
from fedmtl.config.run_config import config_from_run_config, fixed_clients_count
from fedmtl.runfiles.rundir import read_rows
from server.loop import config_for_federation, exchange
from server.server_app import make_server_app
from tests.helpers import ROOT, tiny_overrides

# the tiny model with clients.count left to the federation
TINY = tuple(o for o in tiny_overrides(2) if not o.startswith("clients.count="))


def run_config(*overrides: str, **keys: Any) -> dict[str, Any]:
    return {"config-overrides": ";".join(overrides), **keys}


def simulated_federation(nodes: int) -> InMemoryGrid:
    """Flower's simulation-engine grid with ``nodes`` registered SuperNodes (``num-supernodes``)."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    _register_nodes(num_nodes=nodes, state_factory=factory)
    run = Run.create_empty(run_id=7)
    run.federation_id = NOOP_FEDERATION_ID
    factory.state().run_ids[run.run_id] = RunRecord(run=run)  # as flwr.simulation.run_simulation registers it
    grid = InMemoryGrid(state_factory=factory)
    grid._run = run  # set_run would also need the run's task records
    return grid


class LoopbackGrid(Grid):
    """A federation in this process: each node's ClientApp handles its messages at once. Node ids are
    random per grid (as Flower's are per run); ``fail_at_train`` makes the server's n-th training
    exchange raise, as a SuperLink that went away would."""

    def __init__(self, run_config: Mapping[str, Any], nodes: int, state_dir: Path, fail_at_train: int = 0) -> None:
        self.client_app = make_client_app()
        self.fail_at_train, self.trains = fail_at_train, 0
        self._run = Run.create_empty(run_id=uuid.uuid4().int >> 65)
        self.contexts = {
            uuid.uuid4().int >> 66: Context(
                run_id=self._run.run_id,
                node_id=0,
                node_config={"partition-id": i, "num-partitions": nodes, "state-dir": str(state_dir)},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(nodes)
        }

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.trains += 1
            if self.trains == self.fail_at_train:
                raise ConnectionError("the SuperLink went away")
        replies = []
        for message in messages:
            message.metadata.__dict__.update(
                _message_id=uuid.uuid4().hex, _run_id=self._run.run_id, _src_node_id=SUPERLINK_NODE_ID
            )
            reply = self.client_app(message, self.contexts[message.metadata.dst_node_id])
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(reply)
        return replies


def serve(grid: Grid, config: Mapping[str, Any]) -> None:
    """``server.server_app.app`` as Flower calls it."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))
    make_server_app()(grid, context)


# ----------------------------------------------------------------------------- the federation's size


def test_clients_count_is_fixed_only_when_the_run_config_sets_it(tmp_path):
    assert fixed_clients_count(run_config(*TINY)) is None
    assert fixed_clients_count(run_config(*TINY, "clients.count=3")) == 3
    (tmp_path / "exp.yaml").write_text("clients: {count: 5}\n")
    assert fixed_clients_count({"config-file": str(tmp_path / "exp.yaml")}) == 5
    assert config_from_run_config(run_config(*TINY), clients_count=4).clients.count == 4
    assert config_from_run_config(run_config(*TINY, "clients.count=3"), clients_count=4).clients.count == 3


def test_clients_count_unset_is_taken_from_num_supernodes():
    cfg = config_for_federation(simulated_federation(3), run_config(*TINY), settle_s=0.2)
    assert cfg.clients.count == 3


@pytest.mark.parametrize("count", [3, 1])
def test_clients_count_that_disagrees_with_num_supernodes_fails_at_once_in_one_line(count):
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        config_for_federation(simulated_federation(2), run_config(*TINY, f"clients.count={count}"), settle_s=0.2)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert caught.value.path == "clients.count" and "\n" not in message
    assert f"is {count}" in message and "num-supernodes" in message and "2 SuperNodes" in message


def test_the_server_app_sends_the_federations_count_to_clients_whose_run_config_leaves_it_unset(tmp_path):
    config = run_config(*TINY, "rounds=1", f"output.run_dir={tmp_path / 'run'}")
    serve(LoopbackGrid(config, 3, tmp_path / "state"), config)
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert {r["client"] for r in rows} == {0, 1, 2}
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["clients"]["count"] == 3


# ----------------------------------------------------------------------------- resume-dir


def test_a_failed_deployed_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = (*TINY, "rounds=3", "eval_every=1", "checkpoint.every=1")
    config = run_config(*common, f"output.run_dir={run_dir}")
    with pytest.raises(ConnectionError):
        serve(LoopbackGrid(config, 2, tmp_path / "state", fail_at_train=3), config)
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fedmtl: run failed")]
    assert len(failed) == 1 and "the SuperLink went away" in failed[0] and str(run_dir) in failed[0]
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1, 2]

    # a new run (new node ids, SuperNodes without context.state: the heads come from their state-dir)
    resumed = {**config, "resume-dir": str(run_dir)}
    serve(LoopbackGrid(resumed, 2, tmp_path / "state"), resumed)
    assert "fedmtl: resuming" in capsys.readouterr().out

    reference = tmp_path / "reference"
    config = run_config(*common, f"output.run_dir={reference}")
    serve(LoopbackGrid(config, 2, tmp_path / "reference-state"), config)
    assert read_rows(run_dir / "metrics.jsonl") == read_rows(reference / "metrics.jsonl")
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1, 2, 3]
    assert (run_dir / "summary.md").read_text() == (reference / "summary.md").read_text()


def test_resume_with_another_experiment_or_without_a_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = run_config(*TINY, "rounds=1", "checkpoint.every=0", f"output.run_dir={run_dir}")
    serve(LoopbackGrid(config, 2, tmp_path / "state"), config)
    other = run_config(
        *TINY, "rounds=2", "checkpoint.every=0", f"output.run_dir={run_dir}", **{"resume-dir": str(run_dir)}
    )
    with pytest.raises(ConfigError, match=r"rounds = 1 but this run config gives 2 \(1 keys differ\)") as caught:
        serve(LoopbackGrid(other, 2, tmp_path / "state"), other)
    assert caught.value.path == "resume-dir" and "\n" not in str(caught.value)
    same = {**config, "resume-dir": str(run_dir)}
    with pytest.raises(Exception, match="no checkpoint"):
        serve(LoopbackGrid(same, 2, tmp_path / "state"), same)
    relative = {**config, "resume-dir": "runs/x"}
    with pytest.raises(ConfigError, match="absolute"):
        serve(LoopbackGrid(relative, 2, tmp_path / "state"), relative)


# ----------------------------------------------------------------------------- pulling replies


class ReplyAfter(HttpGrid):
    """A deployed SuperLink's grid whose replies arrive ``delay_s`` after the push (no connection)."""

    def __init__(self, delay_s: float) -> None:  # HttpGrid's own __init__ would connect
        self.delay_s, self.pushed_at, self.pulls = delay_s, 0.0, 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.pushed_at = time.monotonic()
        self.replies = []
        for message in messages:
            reply = Message(RecordDict(), reply_to=_delivered(message))
            self.replies.append(reply)
        return [r.metadata.reply_to_message_id for r in self.replies]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        return self.replies if time.monotonic() - self.pushed_at >= self.delay_s else []


def _delivered(message: Message) -> Message:
    message.metadata.__dict__.update(_message_id=uuid.uuid4().hex, _src_node_id=SUPERLINK_NODE_ID)
    return message


def test_replies_from_a_deployed_superlink_are_pulled_at_a_short_interval():
    grid = ReplyAfter(0.3)
    messages = [Message(RecordDict(), dst_node_id=7, message_type="train")]
    started = time.monotonic()
    replies = exchange(grid, messages, timeout_s=10, pull_interval_s=0.05)
    assert len(replies) == 1 and time.monotonic() - started < 1.0  # Flower's send_and_receive: 3 s
    assert grid.pulls > 2


# ----------------------------------------------------------------------------- a real flwr run (slow)


@pytest.mark.slow
def test_flwr_run_with_fewer_supernodes_than_clients_fails_within_seconds(tmp_path):
    from tests.test_deployment import Processes, free_port, write_flower_config

    procs = Processes(tmp_path / "logs")
    home = tmp_path / "flwr-home"
    write_flower_config(home, "local", {"address": ":local:"})
    env = procs.env(
        home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(free_port())
    )
    overrides = ";".join((*TINY, "clients.count=3", f"output.run_dir={tmp_path / 'run'}"))
    argv = [str(Path(ROOT, ".venv", "bin", "flwr")), "run", ".", "local", "--stream"]
    argv += ["--federation-config", "num-supernodes=2", "--run-config", f"config-overrides='{overrides}'"]
    try:
        started = time.monotonic()
        procs.start("flwr-run", argv, env)
        code = procs.wait("flwr-run", 90)
        seconds, output = time.monotonic() - started, procs.log("flwr-run")
    finally:
        procs.stop()
    assert code is not None, f"flwr run still running after 90 s\n{output[-3000:]}"
    failed = [line for line in output.splitlines() if "fedmtl: run failed" in line]
    assert failed and "num-supernodes" in failed[0] and "clients.count" in failed[0], output[-3000:]
    assert seconds < 60, f"took {seconds:.0f} s"
    assert not re.search(r"only \d+ SuperNodes connected within", output)
    print(f"\nflwr run failed after {seconds:.0f} s: {failed[0]}")


def test_runtime_dependency_installation_is_refused_by_uv_at_once(tmp_path):
    """Flower's runtime installation runs ``uv sync`` in the installed app: the project says it is not
    a uv project, so uv stops before resolving or downloading anything (no CUDA wheels)."""
    project = tmp_path / "app"
    project.mkdir()
    (project / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "uv", "sync", "--offline", "--no-install-project",
         "--no-install-package", "flwr", "--inexact"],
        cwd=project, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "UV_PROJECT_ENVIRONMENT": str(tmp_path / "env"), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode != 0 and "marked as unmanaged" in result.stderr, result.stderr
    assert time.monotonic() - started < 10 and not (tmp_path / "env").exists()
