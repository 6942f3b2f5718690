"""The direct engine: a Flower Grid over Ray actors. Node contexts, error replies, timeouts, dead
workers and warm pools on small ClientApps; the same metrics as Flower's own engine end to end."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedmtl.config.sections import ResourcesConfig
from fedmtl.core.files import read_rows
from fedmtl.runtime.resources import backend_config, private_ray_cluster
from server.engines import workers
from server.engines.direct import DirectGrid
from server.engines.grid import GridEngine
from server.engines.inprocess import InProcessGrid
from server.engines.placed import PlacedGrid
from tests.helpers import TAG_VAR, assert_no_leftover_processes, set_args, simulate, stop_tagged, tiny_overrides


def counting_app() -> ClientApp:
    """Counts calls per node in ``context.state``; ``action`` in the config makes it raise, sleep or die."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        action = msg.content["config"].get("action", "")
        if action == "raise":
            raise RuntimeError("client exploded")
        if action == "die":
            os._exit(1)
        if action == "sleep":
            time.sleep(2.0)
        calls = int(context.state.config_records.get("calls", ConfigRecord({"n": 0}))["n"]) + 1
        context.state["calls"] = ConfigRecord({"n": calls})
        metrics = {"calls": calls, "partition": int(context.node_config["partition-id"]), "pid": os.getpid()}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


@pytest.fixture(scope="module")
def pool():
    tag = uuid.uuid4().hex
    os.environ[TAG_VAR] = tag  # Ray's processes inherit it: leftovers are found by tag
    try:
        with workers.warm_workers():
            warm = workers.worker_pool(backend_config(ResourcesConfig(num_cpus=2)))
            # started here, untimed: the tests' timeouts are for messages, not for a cold start of Ray's
            # workers (60 s was once not enough on the shared 2-core CI machine, busy with a Ray cluster)
            warm.wait_ready()
            yield warm
        assert not stop_tagged(tag), "Ray processes needed SIGKILL after the pool shut down"
    finally:
        del os.environ[TAG_VAR]


@pytest.fixture
def grid(pool, flower_identity):
    return DirectGrid(pool, pool.load(counting_app()), num_nodes=5)


def ask(grid, nodes, action: str = "", timeout: float | None = 60) -> list[Message]:
    messages = [
        Message(RecordDict({"config": ConfigRecord({"action": action})}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    return list(grid.send_and_receive(messages, timeout=timeout))


@pytest.mark.slow
def test_node_contexts_persist_per_node_and_partitions_are_known_without_asking(grid):
    nodes = sorted(grid.get_node_ids())
    for expected_calls in (1, 2):
        replies = ask(grid, nodes)
        assert sorted(m.metadata.src_node_id for m in replies) == nodes
        assert {int(m.content["metrics"]["calls"]) for m in replies} == {expected_calls}
    partitions = {m.metadata.src_node_id: int(m.content["metrics"]["partition"]) for m in replies}
    assert partitions == grid.node_partitions() and sorted(partitions.values()) == list(range(5))
    assert len({int(m.content["metrics"]["pid"]) for m in replies}) == 2  # both workers took messages


@pytest.mark.slow
def test_a_raising_client_app_becomes_an_error_reply_and_the_worker_stays(grid):
    [node, other] = sorted(grid.get_node_ids())[:2]
    [failed] = ask(grid, [node], "raise")
    assert failed.has_error() and "client exploded" in failed.error.reason
    [ok] = ask(grid, [other])
    assert not ok.has_error()


@pytest.mark.slow
def test_a_timeout_returns_what_arrived_and_late_replies_are_dropped(grid):
    nodes = sorted(grid.get_node_ids())
    assert ask(grid, nodes[:1], "sleep", timeout=0.3) == []
    replies = ask(grid, nodes[1:3], timeout=30)  # the sleeping worker finishes meanwhile; its reply is not mixed in
    assert sorted(m.metadata.src_node_id for m in replies) == nodes[1:3]
    [late_node_again] = ask(grid, nodes[:1])  # runs after the late call finished (one message per node at a time)
    assert int(late_node_again.content["metrics"]["calls"]) == 2  # the timed-out call still updated its context
    assert grid.replies == {}  # ... but its reply was dropped, not kept for anyone


@pytest.mark.slow
def test_a_run_that_ends_with_a_worker_still_busy_leaves_every_worker_to_the_next(pool, flower_identity):
    grid = DirectGrid(pool, pool.load(counting_app()), num_nodes=3)
    assert ask(grid, sorted(grid.get_node_ids())[:1], "sleep", timeout=0.2) == []
    grid.close()  # the run ends while one worker still sleeps: it is replaced
    assert len(pool.actors) == 2 and grid.in_flight == {}
    pool.wait_ready()  # the replacement's cold start is not what the timeout below is for
    following = DirectGrid(pool, pool.load(counting_app()), num_nodes=4)
    replies = ask(following, following.get_node_ids(), timeout=60)
    assert len(replies) == 4 and not any(m.has_error() for m in replies)
    assert len({int(m.content["metrics"]["pid"]) for m in replies}) == 2


@pytest.mark.slow
def test_a_dead_worker_is_reported_as_such_and_replaced(grid, pool):
    before = set(pool.wait_ready())
    [died] = ask(grid, sorted(grid.get_node_ids())[:1], "die")
    assert died.has_error() and "ActorDiedError" in died.error.reason  # the round driver restarts on this marker
    pool.wait_ready()  # the replacement has started (untimed), then takes messages
    replies = ask(grid, sorted(grid.get_node_ids()))
    assert not any(m.has_error() for m in replies)
    after = set(pool.wait_ready())
    assert len(after) == len(before) == 2 and len(after & before) == 1


def query(node: int, action: str = "") -> Message:
    return Message(
        RecordDict({"config": ConfigRecord({"action": action})}), dst_node_id=node, message_type=MessageType.QUERY
    )


def collect(grid, ids: list[str]) -> list[Message]:
    """The replies to ``ids`` (pushed already), in their order, once all are in."""
    while not set(ids) <= grid.replies.keys():
        grid._collect(timeout=60)
    return [grid.replies.pop(i) for i in ids]


@pytest.mark.slow
def test_a_long_queue_goes_out_in_batches_and_a_raising_client_fails_only_its_own_message(pool, flower_identity):
    grid = DirectGrid(pool, pool.load(counting_app()), num_nodes=40)
    nodes = sorted(grid.get_node_ids())
    ids = list(grid.push_messages([query(n, "raise" if n == nodes[7] else "") for n in nodes]))
    # 40 queued over 2 actors with 2 slots: batches of 40 // 16 = 2, four calls at once
    assert sorted(len(job.messages) for job in grid.in_flight.values()) == [2, 2, 2, 2]
    replies = collect(grid, ids)
    assert [m.metadata.src_node_id for m in replies if not m.has_error()] == nodes[:7] + nodes[8:]
    [failed] = [m for m in replies if m.has_error()]
    assert failed.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert failed.error.reason == "RuntimeError: client exploded" and failed.metadata.reply_to_message_id == ids[7]
    again = collect(grid, list(grid.push_messages([query(n) for n in nodes])))
    calls = [int(m.content["metrics"]["calls"]) for m in again]
    assert calls == [2] * 7 + [1] + [2] * 32  # every context kept, the failed call's left as it was


@pytest.mark.slow
def test_a_worker_that_dies_fails_every_message_it_held_and_names_each_node(pool, flower_identity):
    grid = DirectGrid(pool, pool.load(counting_app()), num_nodes=40)
    nodes = sorted(grid.get_node_ids())
    pool.wait_ready()
    ids = list(grid.push_messages([query(n, "die" if n == nodes[0] else "") for n in nodes]))
    held = next(job for job in grid.in_flight.values() if nodes[0] in [m.metadata.dst_node_id for m in job.messages])
    lost = {m.metadata.dst_node_id for job in grid.in_flight.values() if job.actor is held.actor for m in job.messages}
    replies = collect(grid, ids)
    failed = {m.metadata.src_node_id: m.error for m in replies if m.has_error()}
    assert len(replies) == 40 and nodes[0] in failed and set(failed) <= lost | {nodes[0]}
    for node, error in failed.items():
        assert error.code == ErrorCode.UNKNOWN
        assert error.reason.startswith("ActorDiedError (") and f"worker lost while running node {node}:" in error.reason
    pool.wait_ready()  # replaced


def test_a_call_carries_up_to_16_messages_and_fewer_as_the_queue_shortens():
    from server.engines.direct import MAX_BATCH, batch_size

    assert MAX_BATCH == 16
    assert [batch_size(q, 2) for q in (1000, 256, 255, 100, 16, 15, 1)] == [16, 16, 15, 6, 1, 1, 1]
    assert batch_size(100, 1) == 12 and batch_size(5, 0) == 1  # no actors: still one


@pytest.mark.slow
def test_runs_inside_warm_workers_reuse_the_same_processes(pool, flower_identity):
    first = workers.worker_pool(backend_config(ResourcesConfig(num_cpus=2)))
    assert first is pool  # same resources: the warm pool, not a new one
    pids = set(pool.wait_ready())
    second_run = DirectGrid(pool, pool.load(counting_app()), num_nodes=3)
    replies = ask(second_run, second_run.get_node_ids())
    assert {int(m.content["metrics"]["calls"]) for m in replies} == {1}  # a new run: fresh node contexts
    assert {int(m.content["metrics"]["pid"]) for m in replies} <= pids == set(pool.wait_ready())


def test_a_grid_that_placed_its_nodes_is_not_queried_for_participants():
    class Placed(InProcessGrid):
        def send_and_receive(self, *_args, **_kwargs):
            raise AssertionError("no query may be sent")

    grid = Placed(counting_app(), 2)
    assert isinstance(grid, PlacedGrid)
    engine = GridEngine(grid)
    engine.connect(2, interchangeable=False)
    assert engine.known and {grid.node_partitions()[node]: p for p, node in engine.node_of.items()} == {0: 0, 1: 1}


@pytest.mark.slow
def test_both_engines_give_identical_metrics(tmp_path, simulate_env):
    # sampling (by client id) with members out of order: each engine must know which client a node plays
    overrides = (
        *tiny_overrides(5),
        "rounds=3",
        "clients.members=[4, 0, 3, 1]",
        "server.fraction_fit=0.5",
        "server.aggregator=pcgrad",
    )
    runs = {}
    for engine in ("direct", "flower"):
        run_dir = tmp_path / engine
        result = simulate(
            *set_args((*overrides, f"simulation.engine={engine}", f"output.run_dir={run_dir}")), env=simulate_env
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs[engine] = run_dir
    assert read_rows(runs["direct"] / "metrics.jsonl") == read_rows(runs["flower"] / "metrics.jsonl")
    timing = ("seconds", "started_at")
    server = [
        [{k: v for k, v in row.items() if k not in timing} for row in read_rows(runs[e] / "server.jsonl")] for e in runs
    ]
    assert server[0] == server[1]
    assert_no_leftover_processes(simulate_env)


@pytest.mark.slow
def test_a_study_attached_to_a_running_ray_cluster_runs_every_federation_on_it(tmp_path, simulate_env):
    """Every arm's federation attaches to the same cluster in one process."""
    overrides = (
        *tiny_overrides(3),
        "rounds=2",
        "study.arms=[fed_mtl, fed_stl]",
        f"output.run_dir={tmp_path / 'study'}",
    )
    previous_tag = os.environ.get(TAG_VAR)
    os.environ[TAG_VAR] = simulate_env[TAG_VAR]  # the head started here carries the test's tag too
    try:
        with private_ray_cluster(ResourcesConfig(num_cpus=2)) as address:
            result = simulate(*set_args((*overrides, f"resources.ray_address={address}")), env=simulate_env)
            assert result.returncode == 0, result.stderr[-2000:]
            assert (tmp_path / "study" / "arms" / "fed_stl" / "seed-0" / "summary.json").is_file()
    finally:
        if previous_tag is None:
            del os.environ[TAG_VAR]
        else:
            os.environ[TAG_VAR] = previous_tag
    assert (tmp_path / "study" / "report.md").exists()
    assert_no_leftover_processes(simulate_env)


def test_an_actor_takes_a_second_message_only_while_more_wait_than_there_are_actors():
    from server.engines.direct import SLOTS_PER_ACTOR, next_actor

    assert SLOTS_PER_ACTOR == 2
    a, b = "a", "b"
    assert next_actor([a, b], {}, queued=1) == a  # idle actors first, in order
    assert next_actor([a, b], {a: 1}, queued=1) == b
    assert next_actor([a, b], {a: 1, b: 1}, queued=3) in (a, b)  # a long queue: each actor gets its second
    assert next_actor([a, b], {a: 1, b: 1}, queued=2) is None  # the round's tail waits for a free actor
    assert next_actor([a, b], {a: 2, b: 1}, queued=5) == b
    assert next_actor([a, b], {a: 2, b: 2}, queued=5) is None  # every slot taken
    assert next_actor([], {}, queued=3) is None  # no workers at all


@pytest.mark.slow
def test_an_actor_takes_the_first_free_message_at_home_on_it_else_the_first_free_one(grid):
    """A partition's messages go to the same actor (its caches serve the client again) unless that would
    leave an actor idle; a node running a message is skipped, as before."""
    from collections import deque
    from types import SimpleNamespace

    from server.engines.direct import HOME_WINDOW, home_of

    nodes = sorted(grid.get_node_ids(), key=grid.contexts.partition_of)  # partitions 0..4 in order
    ids = [f"m{p}" for p in range(5)]
    grid.messages = {i: SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n)) for i, n in zip(ids, nodes)}
    grid.queued = deque(reversed(ids))  # partitions 4, 3, 2, 1, 0
    grid.pool = SimpleNamespace(actors=["a", "b"])
    assert home_of(3, grid.pool.actors) == "b" and HOME_WINDOW * 2 >= 5
    assert grid._next_for("a") == 0 and grid._next_for("b") == 1  # partition 4 is a's, 3 is b's
    grid.busy_nodes = {nodes[4]}
    assert grid._next_for("a") == 2  # partition 4's node is busy: the next of a's, partition 2
    grid.pool = SimpleNamespace(actors=list("abcdefg"))
    assert grid._next_for("g") == 1  # no partition 6 queued: the first free message
    grid.busy_nodes = set(nodes)
    assert grid._next_for("a") is None
    grid.busy_nodes, grid.pool = set(), SimpleNamespace(actors=["a", "b"])
    for home_at, expected in ((HOME_WINDOW * 2 - 1, HOME_WINDOW * 2 - 1), (HOME_WINDOW * 2, 0)):
        others = [f"b{i}" for i in range(home_at)]  # b's messages (partitions 1 and 3) before a's one
        grid.messages = {
            i: SimpleNamespace(metadata=SimpleNamespace(dst_node_id=nodes[1 + 2 * (k % 2)]))
            for k, i in enumerate(others)
        }
        grid.messages["home"] = SimpleNamespace(metadata=SimpleNamespace(dst_node_id=nodes[0]))
        grid.queued = deque([*others, "home"])
        assert grid._next_for("a") == expected  # looked for within the window only
    grid.messages, grid.queued = {}, deque()


def test_replies_are_handed_over_as_they_arrive_while_slower_nodes_still_run(grid):
    """One node sleeps 2 s: the first reply reaches ``on_message`` while it still sleeps."""
    from server.engines.grid import exchange

    nodes = sorted(grid.get_node_ids())
    handed: list[int] = []
    unfinished: list[int] = []  # messages still running or queued when each reply was handed over

    def on_message(message: Message) -> None:
        handed.append(message.metadata.src_node_id)
        unfinished.append(len(grid.in_flight) + len(grid.queued))

    messages = [
        Message(
            RecordDict({"config": ConfigRecord({"action": "sleep" if n == nodes[0] else ""})}),
            dst_node_id=n,
            message_type=MessageType.QUERY,
        )
        for n in nodes
    ]
    replies = exchange(grid, messages, 60, on_message=on_message)
    assert handed == [m.metadata.src_node_id for m in replies] and sorted(handed) == nodes  # each once, as returned
    assert handed[0] != nodes[0] and unfinished[0] > 0  # handed over while the sleeper still ran
    assert grid.on_message is None  # not left set on the grid
