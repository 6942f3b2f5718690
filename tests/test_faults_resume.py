"""Faults, checkpoints and resume: a run survives failing clients and dead workers, and a killed
``simulate.py`` resumed from its run directory ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from clients.client_app import make_client_app
from fedmtl.config.loading import load_config
from fedmtl.config.sections import FaultsConfig
from fedmtl.core.files import RowWriter, read_rows
from fedmtl.federation.algorithm import ServerAlgorithm
from fedmtl.local.faults import draw_faults
from fedmtl.local.state_store import ClientStateStore
from fedmtl.runfiles.checkpoint import truncate_rows_after
from server.engines.grid import GridEngine
from server.engines.inprocess import InProcessGrid
from tests.helpers import (
    IN_PROCESS,
    ROOT,
    assert_no_leftover_processes,
    set_args,
    simulate,
    tiny_overrides,
)

# fraction_fit < 1: the resumed/restarted run has new random node ids, yet must sample the same clients
SMALL = (*tiny_overrides(4), "rounds=5", "server.fraction_fit=0.75")  # seed 0 samples [0, 1, 3], then [1, 2, 3]


def _rows_by_key(path) -> dict[tuple, dict]:
    return {(r["round"], r["split"], r["client"], r["task"]): r for r in read_rows(path)}


# ----------------------------------------------------------------------------- fast: the pieces


def test_fault_draws_are_deterministic_and_follow_the_rates():
    faults = FaultsConfig(client_error_rate=0.3, client_nan_rate=0.1)
    draws = [draw_faults(faults, 7, r, c) for r in range(1, 51) for c in range(20)]
    assert draws == [draw_faults(faults, 7, r, c) for r in range(1, 51) for c in range(20)]
    assert 0.25 < sum(d.error for d in draws) / len(draws) < 0.35
    assert 0.06 < sum(d.nan for d in draws) / len(draws) < 0.14
    assert not any(draw_faults(FaultsConfig(), 7, r, 0).error for r in range(1, 100))


def test_worker_kill_fires_once_in_its_round_and_not_after_a_restart():
    faults = FaultsConfig(worker_kill_round=3, worker_kill_client=1)
    assert draw_faults(faults, 0, 3, 1).kill_worker
    assert not draw_faults(faults, 0, 3, 1, attempt=1).kill_worker
    assert not draw_faults(faults, 0, 2, 1).kill_worker and not draw_faults(faults, 0, 3, 0).kill_worker


def test_worker_kill_fires_in_the_first_kill_attempts_attempts():
    faults = FaultsConfig(worker_kill_round=2, worker_kill_client=0, worker_kill_attempts=3)
    assert [draw_faults(faults, 0, 2, 0, attempt=a).kill_worker for a in range(5)] == [True] * 3 + [False] * 2


class _DyingEngine:
    """An engine whose worker pool dies in the first ``deaths`` runs (no Ray: the restart loop alone)."""

    def __init__(self, deaths: int) -> None:
        self.deaths, self.attempts, self.sessions = deaths, [], 0

    def run(self, server_app, client_app, nodes, backend, verbose) -> None:
        from fedmtl.core.errors import WorkerPoolDied

        self.attempts.append(len(self.attempts))
        if len(self.attempts) <= self.deaths:
            raise WorkerPoolDied(f"round 1: a worker died (death {len(self.attempts)})")

    @contextlib.contextmanager
    def session(self, resources):
        self.sessions += 1
        yield resources


@pytest.mark.parametrize(("deaths", "restarts", "gives_up"), [(2, 2, False), (3, 2, True), (1, 0, True), (0, 0, False)])
def test_restarts_are_counted_against_checkpoint_restarts(tmp_path, monkeypatch, deaths, restarts, gives_up):
    from fedmtl.config.loading import load_config
    from fedmtl.runfiles.rundir import RunDirectory
    from server import simulation

    engine = _DyingEngine(deaths)
    monkeypatch.setattr(simulation, "engine_for", lambda kind: engine)
    cfg = load_config(None, [*SMALL, f"checkpoint.restarts={restarts}", f"output.run_dir={tmp_path / 'run'}"])
    lines: list[str] = []
    if gives_up:
        with pytest.raises(simulation.RestartsExhausted, match=f"gave up after {restarts} restarts"):
            simulation.federate(cfg, RunDirectory.create(cfg), echo=lines.append)
        assert len(engine.attempts) == restarts + 1
    else:
        simulation.federate(cfg, RunDirectory.create(cfg), echo=lines.append)
        assert len(engine.attempts) == deaths + 1
    assert engine.sessions == 1  # every attempt ran in one engine session: Ray is not restarted in between
    assert lines == [
        f"fedmtl: round 1: a worker died (death {n}); restarting from the last checkpoint (restart {n} of {restarts})"
        for n in range(1, min(deaths, restarts) + 1)
    ]


def test_client_state_store_returns_the_state_a_checkpoint_saw(tmp_path):
    store = ClientStateStore(tmp_path, participant=3)

    def save(server_round: int) -> None:  # the last checkpoint is always after the previous round
        store.save(server_round, {"heads.t.w": torch.full((2,), float(server_round))}, durable_round=server_round - 1)

    for server_round in (1, 2, 4):  # the client was not sampled in round 3
        save(server_round)
    assert store.load(3)["heads.t.w"].tolist() == [2.0, 2.0]  # a checkpoint after round 3 saw round 2's state
    assert store.load(0) is None
    save(5)
    assert store.load(5)["heads.t.w"].tolist() == [5.0, 5.0]
    # versions older than the newest one at or before the durable round (4) are pruned
    assert store.versions() == [4, 5]


def test_client_sampling_depends_on_client_ids_not_on_random_node_ids(flower_identity):
    cfg = load_config(None, [*tiny_overrides(10), "server.fraction_fit=0.3"])
    picks = []
    for _ in range(2):  # two runs: the same participants, other random node ids
        grid = InProcessGrid(make_client_app(cfg), 10)
        engine = GridEngine(grid)
        engine.connect(10, interchangeable=False)
        sends = ServerAlgorithm(cfg).train_sends(1, {})
        assert all(grid.node_partitions()[engine.node_of[s.participant]] == s.participant for s in sends)
        picks.append([s.participant for s in sends])
    assert picks[0] == picks[1] and len(picks[0]) == 3 and picks[0] == sorted(picks[0])


def test_truncate_rows_after_keeps_earlier_rounds_in_both_formats(tmp_path):
    for suffix in ("jsonl", "csv"):
        path = tmp_path / f"metrics.{suffix}"
        writer = RowWriter(path, ("round", "client", "loss"))
        writer.write([{"round": r, "client": 0, "loss": 1.0 / (r + 1)} for r in range(5)])
        truncate_rows_after(path, 2)
        assert [r["round"] for r in read_rows(path)] == [0, 1, 2]
        writer.write([{"round": 3, "client": 0, "loss": 0.5}])
        assert [r["round"] for r in read_rows(path)] == [0, 1, 2, 3]


def test_a_csv_table_written_with_fewer_columns_keeps_its_header_when_appended(tmp_path):
    """A run resumed after fedmtl added metric columns appends under the file's own header."""
    path = tmp_path / "metrics.csv"
    RowWriter(path, ("round", "loss")).write([{"round": 0, "loss": 1.0}])
    RowWriter(path, ("round", "loss", "ece")).write([{"round": 1, "loss": 0.5, "ece": 0.1}])
    assert read_rows(path) == [{"round": 0, "loss": 1.0}, {"round": 1, "loss": 0.5}]


def test_resume_rejects_a_directory_without_a_run(tmp_path, simulate_env):
    result = simulate("--resume", str(tmp_path), env=simulate_env)
    assert result.returncode == 2 and "--resume" in result.stderr and "Traceback" not in result.stderr
    result = simulate("--resume", str(tmp_path), "--set", "rounds=3", env=simulate_env)
    assert result.returncode == 2 and "do not combine" in result.stderr


# ----------------------------------------------------------------------------- slow: real runs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, module_env):
    run_dir = tmp_path_factory.mktemp("runs") / "uninterrupted"
    result = simulate(*set_args((*SMALL, IN_PROCESS, f"output.run_dir={run_dir}")), env=module_env)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


@pytest.mark.slow
def test_failing_and_corrupt_clients_are_counted_and_the_run_goes_on(tmp_path, simulate_env):
    run_dir = tmp_path / "faulty"
    overrides = (
        *SMALL,
        "server.fraction_fit=1.0",
        "faults.client_error_rate=0.25",
        "faults.client_nan_rate=0.25",
        "server.min_fit_fraction=0.25",
        IN_PROCESS,
    )
    result = simulate(*set_args((*overrides, f"output.run_dir={run_dir}")), env=simulate_env)
    assert result.returncode == 0, result.stderr[-2000:]
    faults = FaultsConfig(client_error_rate=0.25, client_nan_rate=0.25)
    rows = read_rows(run_dir / "server.jsonl")
    assert [row["round"] for row in rows] == [1, 2, 3, 4, 5]
    assert sum(row["failures"] for row in rows) > 0 and sum(len(row["rejected"]) for row in rows) > 0
    for row in rows:
        draws = {c: draw_faults(faults, 0, row["round"], c) for c in range(4)}
        assert row["failures"] == sum(d.error for d in draws.values())
        assert sorted(r["client"] for r in row["rejected"]) == sorted(
            c for c, d in draws.items() if d.nan and not d.error
        )
        assert all("non-finite" in r["reason"] for r in row["rejected"])
        assert sorted(row["clients"]) == sorted(c for c, d in draws.items() if not (d.nan or d.error))
    assert "Traceback" not in result.stdout + result.stderr  # a failing client is one line, not a Ray traceback
    assert_no_leftover_processes(simulate_env)


@pytest.mark.slow
def test_too_few_valid_updates_stop_the_run_with_valid_files(tmp_path, simulate_env):
    run_dir = tmp_path / "starved"
    result = simulate(
        *set_args(
            (*SMALL, IN_PROCESS, "server.fraction_fit=1.0", "faults.client_nan_rate=1.0", f"output.run_dir={run_dir}")
        ),
        env=simulate_env,
    )
    assert result.returncode == 1
    assert "round 1: only 0 of 4 sampled clients sent a valid update" in result.stderr
    rows = read_rows(run_dir / "metrics.jsonl")
    assert {r["round"] for r in rows if r["split"] == "eval"} == {0}  # round-0 evaluation stays; no update was applied
    assert {r["round"] for r in rows if r["split"] == "train"} == {1}  # the clients did train: their losses are kept
    [row] = read_rows(run_dir / "server.jsonl")
    assert row["round"] == 1 and len(row["rejected"]) == 4
    assert_no_leftover_processes(simulate_env)


@pytest.mark.slow
def test_a_dead_worker_restarts_from_the_checkpoint_and_changes_nothing(tmp_path, module_env, uninterrupted):
    """On the direct engine; under Flower's engine in tests/test_personalisation.py (a learned run restarted)."""
    run_dir = tmp_path / "killed-worker"
    faults = ("faults.worker_kill_round=3", "faults.worker_kill_client=2", "simulation.engine=direct")
    result = simulate(*set_args((*SMALL, *faults, f"output.run_dir={run_dir}")), env=module_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "round 3: a worker died; restarting from the last checkpoint" in result.stdout
    assert _rows_by_key(run_dir / "metrics.jsonl") == _rows_by_key(uninterrupted / "metrics.jsonl")
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1, 2, 3, 4, 5]
    assert_no_leftover_processes(module_env)


@pytest.mark.slow
def test_killed_simulate_resumes_to_the_same_final_metrics(tmp_path, module_env, uninterrupted):
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "simulate.py"), *set_args((*SMALL, IN_PROCESS, "faults.client_delay_s=0.3", f"output.run_dir={run_dir}"))],
        cwd=ROOT, env=module_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "server.jsonl").exists() or len(read_rows(run_dir / "server.jsonl")) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # simulate.py, its Ray head and workers: an abrupt crash
        process.wait()
    assert_no_leftover_processes(module_env)
    assert not (run_dir / "summary.json").exists()

    result = simulate("--resume", str(run_dir), env=module_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout
    assert _rows_by_key(run_dir / "metrics.jsonl") == _rows_by_key(uninterrupted / "metrics.jsonl")
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1, 2, 3, 4, 5]
    assert (run_dir / "summary.json").read_text() == (uninterrupted / "summary.json").read_text()
    assert_no_leftover_processes(module_env)


@pytest.mark.slow
def test_repeated_deaths_before_the_first_checkpoint_start_over_and_change_nothing(tmp_path, module_env, uninterrupted):
    """The worker dies in round 1 in two attempts running, before any checkpoint (every 2 rounds): each
    restart begins the run again from round 0, and the finished run equals an uninterrupted one."""
    run_dir = tmp_path / "twice-killed"
    faults = (
        "faults.worker_kill_round=1", "faults.worker_kill_client=1", "faults.worker_kill_attempts=2",
        "checkpoint.every=2", "checkpoint.restarts=2",
    )  # fmt: skip
    result = simulate(*set_args((*SMALL, *faults, f"output.run_dir={run_dir}")), env=module_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("round 1: a worker died; restarting from the last checkpoint") == 2
    assert "(restart 2 of 2)" in result.stdout
    assert _rows_by_key(run_dir / "metrics.jsonl") == _rows_by_key(uninterrupted / "metrics.jsonl")
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1, 2, 3, 4, 5]
    assert_no_leftover_processes(module_env)


@pytest.mark.slow
def test_running_out_of_restarts_stops_with_one_line_and_keeps_the_files(tmp_path, module_env):
    run_dir = tmp_path / "exhausted"
    faults = ("faults.worker_kill_round=2", "faults.worker_kill_client=1", "faults.worker_kill_attempts=2")
    result = simulate(
        *set_args((*SMALL, *faults, "checkpoint.restarts=1", f"output.run_dir={run_dir}")), env=module_env
    )
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "gave up after 1 restarts (checkpoint.restarts)" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert [r["round"] for r in read_rows(run_dir / "server.jsonl")] == [1]  # round 1 was checkpointed
    assert not (run_dir / "summary.json").exists()
    assert_no_leftover_processes(module_env)
