"""The round driver's rules, run end to end in this process (``tests/loopback.py``: the real ServerApp and
ClientApp, no Ray): the evaluation schedule when ``rounds`` is not a multiple of ``eval_every``, the
evaluation sample at ``server.fraction_evaluate < 1``, and resume with federated heads and a stateful
server optimizer."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fedmtl.config.loading import load_config
from fedmtl.core.errors import FederationError
from fedmtl.core.files import read_rows
from fedmtl.driver.schedule import evaluation_rounds, updates_needed
from fedmtl.federation.algorithm import ServerAlgorithm
from fedmtl.local.client import LocalClient
from fedmtl.runfiles.checkpoint import load_server_checkpoint
from fedmtl.runfiles.rundir import RunDirectory
from server.server_app import make_server_app
from tests.helpers import TINY_CLIENT_TASKS, tiny_overrides
from tests.loopback import LoopbackGrid, as_server_task, run_config, run_in_process, serve

TINY = tiny_overrides(3)


def eval_rounds_of(run_dir) -> list[int]:
    return sorted({r["round"] for r in read_rows(run_dir / "metrics.jsonl") if r["split"] == "eval"})


# ----------------------------------------------------------------------------- the evaluation schedule


@pytest.mark.parametrize(
    ("rounds", "every", "expected"),
    [(5, 2, [0, 2, 4, 5]), (4, 2, [0, 2, 4]), (3, 5, [0, 3]), (1, 1, [0, 1]), (6, 3, [0, 3, 6])],
)
def test_evaluation_rounds_always_include_round_zero_and_the_last(rounds, every, expected):
    cfg = load_config(None, [f"rounds={rounds}", f"eval_every={every}"])
    assert evaluation_rounds(cfg) == expected


def test_a_run_evaluates_the_last_round_and_its_summary_ends_there(tmp_path):
    run_dir = run_in_process(tmp_path, "run", *TINY, "rounds=5", "eval_every=2")
    assert eval_rounds_of(run_dir) == [0, 2, 4, 5]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tasks"] and all(task["round_final"] == 5 for task in summary["tasks"])
    assert all(sorted(map(int, task["curve"])) == [0, 2, 4, 5] for task in summary["tasks"])
    # every (client, task) held is evaluated at every evaluated round
    rows = read_rows(run_dir / "metrics.jsonl")
    for server_round in (0, 2, 4, 5):
        held = {(r["client"], r["task"]) for r in rows if r["split"] == "eval" and r["round"] == server_round}
        assert held == TINY_CLIENT_TASKS


# ----------------------------------------------------------------------------- fraction_evaluate


def test_fraction_evaluate_samples_that_share_of_clients_each_evaluation(tmp_path):
    overrides = (*tiny_overrides(4), "rounds=4", "server.fraction_evaluate=0.5")
    first = run_in_process(tmp_path, "first", *overrides, nodes=4)
    second = run_in_process(tmp_path, "second", *overrides, nodes=4)  # new random node ids: the same sample
    samples = {}
    for run_dir in (first, second):
        rows = [r for r in read_rows(run_dir / "metrics.jsonl") if r["split"] == "eval"]
        samples[run_dir] = {r: sorted({row["client"] for row in rows if row["round"] == r}) for r in range(5)}
    assert samples[first] == samples[second]
    assert all(len(clients) == 2 for clients in samples[first].values()), samples[first]  # round(0.5 x 4)
    assert len({tuple(c) for c in samples[first].values()}) > 1, "the sample must change across rounds"
    # training is not sampled (fraction_fit 1): every client trains every round
    train = [r for r in read_rows(first / "metrics.jsonl") if r["split"] == "train"]
    assert {(r["round"], r["client"]) for r in train} == {(r, c) for r in range(1, 5) for c in range(4)}


def test_full_evaluation_is_the_default(tmp_path):
    run_dir = run_in_process(tmp_path, "run", *TINY, "rounds=1")
    rows = [r for r in read_rows(run_dir / "metrics.jsonl") if r["split"] == "eval"]
    assert {(r["round"], r["client"]) for r in rows} == {(r, c) for r in (0, 1) for c in range(3)}


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "extra",
    [
        ("server.federate_heads=true",),
        ("server.federate_heads=true", "server.optimizer={name: adam, lr: 0.05}"),
        ("server.optimizer={name: sgd, lr: 0.5, momentum: 0.9}",),
    ],
    ids=["fed_full", "fed_full+fedadam", "fedavgm"],
)
def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, extra):
    common = (*TINY, "rounds=4", "checkpoint.every=1", *extra)
    reference = run_in_process(tmp_path, "reference", *common)
    with pytest.raises(ConnectionError):
        run_in_process(tmp_path, "run", *common, fail_at_train=3)
    run_dir = tmp_path / "run"
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1, 2]
    run_in_process(tmp_path, "run", *common, **{"resume-dir": str(run_dir)})
    assert read_rows(run_dir / "metrics.jsonl") == read_rows(reference / "metrics.jsonl")
    assert torch.load(run_dir / "encoder.pt").keys() == torch.load(reference / "encoder.pt").keys()
    for key, value in torch.load(reference / "encoder.pt").items():
        assert torch.equal(torch.load(run_dir / "encoder.pt")[key], value)
    if "server.federate_heads=true" in extra:  # the federated heads came back from the checkpoint
        heads = load_server_checkpoint(RunDirectory.open(str(run_dir))[0]).state["heads"]
        expected = load_server_checkpoint(RunDirectory.open(str(reference))[0]).state["heads"]
        assert heads and heads.keys() == expected.keys()
        assert all(torch.equal(heads[k], expected[k]) for k in heads)


def test_restoring_a_checkpoint_that_disagrees_on_federated_heads_is_refused():
    plain = load_config(None, list(TINY))
    full = load_config(None, [*TINY, "server.federate_heads=true"])
    without_heads = ServerAlgorithm(plain).state_dict()
    with_heads = ServerAlgorithm(full).state_dict()
    assert with_heads["heads"]
    with pytest.raises(ValueError, match="federate_heads"):
        ServerAlgorithm(full).load_state_dict(without_heads)
    with pytest.raises(ValueError, match="federate_heads"):
        ServerAlgorithm(plain).load_state_dict(with_heads)
    restored = ServerAlgorithm(full)
    changed = {k: v + 1 for k, v in with_heads["heads"].items()}
    restored.load_state_dict({**with_heads, "heads": changed})
    assert restored.heads is not None
    assert all(torch.equal(restored.heads.state_dict()[k], changed[k]) for k in changed)


def test_a_checkpoint_of_other_cohorts_is_refused():
    stl = load_config(None, [*TINY, "clients.participants=client_tasks", "server.cohorts=task"])
    with pytest.raises(ValueError, match="cohorts"):
        ServerAlgorithm(load_config(None, list(TINY))).load_state_dict(ServerAlgorithm(stl).state_dict())


def test_a_run_whose_every_evaluation_fails_stops_with_the_error(tmp_path, monkeypatch):
    def broken(self, shared, private, server_round=0):
        raise RuntimeError("the held-out data cannot be read")

    monkeypatch.setattr(LocalClient, "evaluate", broken)
    with pytest.raises(FederationError, match="every evaluation failed.*cannot be read"):
        run_in_process(tmp_path, "run", *TINY, "rounds=1")


def test_a_partial_evaluation_failure_is_logged_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    original = LocalClient.evaluate

    def fails_on_client_1(self, shared, private, server_round=0):
        if self.client_id == 1:
            raise RuntimeError("client 1's held-out data cannot be read")
        return original(self, shared, private, server_round)

    monkeypatch.setattr(LocalClient, "evaluate", fails_on_client_1)
    with caplog.at_level("WARNING"):
        run_dir = run_in_process(tmp_path, "run", *TINY, "rounds=1")
    assert {r["client"] for r in read_rows(run_dir / "metrics.jsonl") if r["split"] == "eval"} == {0, 2}
    assert any("evaluation failed" in m and "cannot be read" in m for m in caplog.messages)


# ----------------------------------------------------------------------------- too few valid updates


def test_a_round_short_of_valid_updates_stops_without_a_checkpoint_and_names_no_cohort_when_there_is_one(tmp_path):
    """Every update is NaN (rejected): the round's row is written, no checkpoint of it is (the next run
    resumes from the last good round), and the message names the shortfall; one cohort: no cohort key."""
    overrides = (*TINY, "rounds=2", "checkpoint.every=1", "faults.client_nan_rate=1.0")
    with pytest.raises(FederationError) as raised:
        run_in_process(tmp_path, "run", *overrides)
    assert str(raised.value) == (
        "round 1: only 0 of 3 sampled clients sent a valid update (server.min_fit_fraction = 0.5); stopping. "
        "Files up to round 0 are complete."
    )
    run_dir = tmp_path / "run"
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1]
    assert load_server_checkpoint(RunDirectory.open(str(run_dir))[0]) is None


def test_a_short_round_of_several_cohorts_names_the_first_short_one(tmp_path):
    overrides = (*TINY, "rounds=1", "clients.participants=client_tasks", "server.cohorts=task")
    with pytest.raises(FederationError, match=r"^round 1: only 0 of \d+ sampled clients of cohort \S+ sent a valid"):
        run_in_process(tmp_path, "run", *overrides, "faults.client_nan_rate=1.0", nodes=6)  # a node per (client, task)


@pytest.mark.parametrize(
    ("fraction", "sampled", "needed"), [(0.5, 3, 2), (0.5, 4, 2), (1.0, 4, 4), (0.25, 10, 3), (0.0, 5, 1), (0.1, 1, 1)]
)
def test_a_cohort_needs_min_fit_fraction_of_its_sampled_clients_rounded_up_and_at_least_one(fraction, sampled, needed):
    cfg = load_config(None, [f"server.min_fit_fraction={fraction}"])
    assert updates_needed(cfg, sampled) == needed


def test_a_restart_before_the_first_checkpoint_starts_the_run_over(tmp_path):
    """A restart (attempt 1, after a dead worker) with no checkpoint yet: not an error as a user's resume
    would be, but round 1 again from the start, the first try's rows dropped: the run ends as one
    that never failed."""
    common = (*TINY, "rounds=2", "checkpoint.every=5")
    reference = run_in_process(tmp_path, "reference", *common)
    with pytest.raises(ConnectionError):
        run_in_process(tmp_path, "run", *common, fail_at_train=2)
    run_dir = tmp_path / "run"
    run = RunDirectory.open(str(run_dir))[0]
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1] and load_server_checkpoint(run) is None
    config = run_config(*common, f"output.run_dir={run_dir}")
    restart = make_server_app(load_config(None, list(common)), run, resume=True, attempt=1, echo=None)
    serve(LoopbackGrid(config, 3, tmp_path / "run-state"), config, restart)
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1, 2]
    assert read_rows(run_dir / "metrics.jsonl") == read_rows(reference / "metrics.jsonl")


def test_a_checkpoint_the_config_cannot_restore_stops_the_resumed_run_with_the_reason(tmp_path):
    common = (*TINY, "rounds=1")
    run_dir = run_in_process(tmp_path, "run", *common)
    config = run_config(*common, f"output.run_dir={run_dir}")
    heads = load_config(None, [*common, "server.federate_heads=true"])
    resumed = make_server_app(heads, RunDirectory.open(str(run_dir))[0], resume=True, echo=None)
    with pytest.raises(
        FederationError, match=r"^the checkpoint and server\.federate_heads disagree on federated heads"
    ):
        serve(LoopbackGrid(config, 3, tmp_path / "run-state"), config, resumed)


def test_every_callback_is_closed_also_when_the_run_fails(tmp_path):
    """``on_close`` (the TensorBoard writer's flush) runs after a failure as after a finished run."""
    from fedmtl.driver.loop import Callback, RoundDriver, RunState
    from fedmtl.runfiles.summary import EvalCurves

    class NoFederation:
        def connect(self, participants, interchangeable):
            raise FederationError("no SuperNode connected")

    class Closing(Callback):
        closed = 0

        def on_close(self, state):
            Closing.closed += 1

    cfg = load_config(None, [*TINY, f"output.run_dir={tmp_path / 'run'}"])
    state = RunState(cfg, RunDirectory.create(cfg), ServerAlgorithm(cfg), EvalCurves(cfg.data.task_specs()))
    with pytest.raises(FederationError, match="no SuperNode connected"):
        RoundDriver(state, NoFederation(), [Closing(), Closing()]).run()  # type: ignore[arg-type]
    assert Closing.closed == 2


@pytest.mark.parametrize(
    ("sampled", "interchangeable"), [("server.fraction_fit=1.0", True), ("server.fraction_fit=0.5", False)]
)
def test_the_driver_tells_the_engine_and_every_callback_what_they_need(tmp_path, sampled, interchangeable):
    """The engine learns how many participants there are and whether they are interchangeable (every
    one sent the same: true only without sampling, cohorts or personalisation) and every exchange the
    round timeout; each callback gets
    the run's state and the round number at every round start, and the state when it is closed."""
    from fedmtl.driver.loop import Callback
    from fedmtl.driver.run import run_rounds
    from server.engines.grid import GridEngine

    class Recording(GridEngine):
        timeouts: list[tuple[str, float | None]] = []

        def connect(self, participants: int, interchangeable: bool) -> None:
            self.connected = (participants, interchangeable)
            super().connect(participants, interchangeable)

        def exchange(self, sends, timeout_s, on_reply=None):
            self.timeouts.append((sends[0].kind, timeout_s))
            return super().exchange(sends, timeout_s, on_reply)

    class Recorder(Callback):
        def __init__(self):
            self.starts, self.closed = [], []

        def on_round_start(self, state, server_round):
            self.starts.append((state, server_round))

        def on_close(self, state):
            self.closed.append(state)

    overrides = (*TINY, "rounds=2", "server.round_timeout_s=37", sampled, f"output.run_dir={tmp_path / 'run'}")
    cfg = load_config(None, list(overrides))
    grid = LoopbackGrid(run_config(*overrides), 3, tmp_path / "state")
    as_server_task(grid)
    engine, recorder = Recording(grid), Recorder()
    state = run_rounds(cfg, RunDirectory.create(cfg), engine, echo=None, extra=[recorder])
    assert engine.connected == (3, interchangeable)
    assert engine.timeouts == [("evaluate", 37), *[("train", 37), ("evaluate", 37)] * 2]  # every exchange
    assert recorder.starts == [(state, 1), (state, 2)] and recorder.closed == [state]


def test_when_every_evaluation_fails_the_message_quotes_one_failure_whole(tmp_path, monkeypatch):
    def broken(self, shared, private, server_round=0):
        raise RuntimeError(f"client {self.client_id}'s held-out data cannot be read")

    monkeypatch.setattr(LocalClient, "evaluate", broken)
    with pytest.raises(FederationError) as raised:
        run_in_process(tmp_path, "run", *TINY, "rounds=1")
    named = re.search(r"participant (\d+): .*client (\d+)'s held-out data", str(raised.value))
    assert named is not None and named.group(1) == named.group(2)  # the participant and its own error
