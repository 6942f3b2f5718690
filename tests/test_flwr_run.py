"""The ServerApp as ``flwr run`` and a deployment start it (config from the run config), without real
processes: the number of clients taken from the federation, a fast one-line failure when the run config
and the federation disagree, resuming a run directory (``resume-dir``), the short reply pulls against a
deployed SuperLink; plus one real ``flwr run`` on the local simulation federation (slow)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid
from flwr.superlink.grid.http_grid import HttpGrid

from fedmtl.config.run_config import config_from_run_config, fixed_clients_count
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.driver.engine import EngineCapabilities
from server.engines.grid import GridEngine, exchange
from server.federation import config_for_federation
from tests.helpers import ROOT, tiny_overrides
from tests.loopback import LoopbackGrid, run_config, serve

# the tiny model with clients.count left to the federation
TINY = tuple(o for o in tiny_overrides(2) if not o.startswith("clients.count="))


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
    # a simulated federation is checked once settled, never waited for: a node timeout of 1000 s would
    # end in a FederationError ("only 2 SuperNodes connected within"), not in this ConfigError
    with pytest.raises(ConfigError) as caught:
        config_for_federation(
            simulated_federation(2), run_config(*TINY, f"clients.count={count}"), timeout_s=1000, settle_s=0.2
        )
    message = str(caught.value)
    assert caught.value.path == "clients.count" and "\n" not in message
    assert f"gives {count} participants" in message and "num-supernodes" in message and "2 SuperNodes" in message


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
    """A deployed SuperLink's grid whose replies arrive at the ``ready_at``-th pull (no connection)."""

    def __init__(self, ready_at: int) -> None:  # HttpGrid's own __init__ would connect
        self.ready_at, self.pulls = ready_at, 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.replies = [Message(RecordDict(), reply_to=_delivered(message)) for message in messages]
        return [r.metadata.reply_to_message_id for r in self.replies]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        return self.replies if self.pulls >= self.ready_at else []


def _delivered(message: Message) -> Message:
    message.metadata.__dict__.update(_message_id=uuid.uuid4().hex, _src_node_id=SUPERLINK_NODE_ID)
    return message


def test_replies_from_a_deployed_superlink_are_pulled_at_the_configured_interval(monkeypatch, flower_identity):
    """Between pulls the ServerApp sleeps ``pull_interval_s`` (Flower's own send_and_receive sleeps 3 s),
    and it stops pulling as soon as every reply is in."""
    sleeps: list[float] = []
    monkeypatch.setattr("server.engines.grid.time.sleep", sleeps.append)
    # the grid stands in for the SuperLink's API: pull through it (tests/test_superlink_pull.py tests the pull)
    monkeypatch.setattr("server.engines.grid.pull_replies", lambda grid, ids: list(grid.pull_messages(ids)))
    grid = ReplyAfter(ready_at=4)
    messages = [Message(RecordDict(), dst_node_id=7, message_type="train")]
    replies = exchange(grid, messages, timeout_s=10, pull_interval_s=0.05)
    assert len(replies) == 1 and grid.pulls == 4
    assert sleeps == [0.05, 0.05, 0.05]


# ----------------------------------------------------------------------------- a real flwr run (slow)


@pytest.mark.slow
def test_flwr_run_with_fewer_supernodes_than_clients_fails_on_the_size_check(tmp_path):
    from tests.test_deployment import Processes, free_port, write_flower_config

    procs = Processes(tmp_path / "logs")
    home = tmp_path / "flwr-home"
    write_flower_config(home, "local", {"address": ":local:"})
    env = procs.env(
        home, FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(free_port())
    )
    overrides = ";".join((*TINY, "clients.count=3", f"output.run_dir={tmp_path / 'run'}"))
    argv = [str(Path(sys.executable).parent / "flwr"), "run", ".", "local", "--stream"]
    argv += ["--federation-config", "num-supernodes=2", "--run-config", f"config-overrides='{overrides}'"]
    try:
        started = time.monotonic()
        procs.start("flwr-run", argv, env)
        code = procs.wait("flwr-run", 180)
        seconds, output = time.monotonic() - started, procs.log("flwr-run")
    finally:
        procs.stop()
    assert code is not None, f"flwr run still running after 180 s\n{output[-3000:]}"
    failed = [line for line in output.splitlines() if "fedmtl: run failed" in line]
    assert failed and "num-supernodes" in failed[0] and "clients.count" in failed[0], output[-3000:]
    # it failed on the size check, not after waiting out the node timeout (which says this instead)
    assert not re.search(r"only \d+ SuperNodes connected within", output)
    print(f"\nflwr run failed after {seconds:.0f} s: {failed[0]}")


def test_runtime_dependency_installation_is_refused_by_uv_at_once(tmp_path):
    """Flower's runtime installation runs ``uv sync`` in the installed app: the project says it is not
    a uv project, so uv stops before resolving or downloading anything (no CUDA wheels)."""
    project = tmp_path / "app"
    project.mkdir()
    (project / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "uv", "sync", "--offline", "--no-install-project",
         "--no-install-package", "flwr", "--inexact"],
        cwd=project, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "UV_PROJECT_ENVIRONMENT": str(tmp_path / "env"), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode != 0 and "marked as unmanaged" in result.stderr, result.stderr
    assert not (tmp_path / "env").exists()  # stopped before creating an environment, let alone resolving


def test_nodes_that_must_be_asked_answer_with_their_participant_even_without_clients_count(flower_identity):
    """A grid that did not place its nodes (Flower's simulation, a deployment) asks each node which
    participant it plays; the question carries ``clients.count`` for run configs that leave it unset."""
    config = run_config(*TINY, "server.fraction_fit=0.5")  # sampling: the server must know who is who
    grid = LoopbackGrid(config, 3, Path("unused"))
    engine = GridEngine(
        grid, EngineCapabilities(places_nodes=False, fixed_size=False), query_config={"clients-count": 3}
    )
    engine.connect(3, interchangeable=False)
    assert engine.known and {p: grid.node_partitions()[node] for p, node in engine.node_of.items()} == {
        0: 0,
        1: 1,
        2: 2,
    }
