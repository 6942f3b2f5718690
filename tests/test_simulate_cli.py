"""simulate.py as a user runs it: error paths (fast) and end-to-end runs (slow)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from fedmtl.core.files import read_rows
from tests.helpers import (
    IN_PROCESS,
    TINY_CLIENT_TASKS,
    TINY_OVERRIDES,
    assert_no_leftover_processes,
    set_args,
    simulate,
)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "rounds=zero"], "rounds: must be an integer"),
        (["--set", "clients.count=2", "--set", "clients.tasks=[[anchor],[nope]]"], "clients.tasks[1][0]"),
        (["--config", "does/not/exist.yaml"], "file not found"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--set", "resources.client_gpus=1", "--set", "resources.num_gpus=0"], "resources.client_gpus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment, simulate_env):
    result = simulate(*args, env=simulate_env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_existing_run_directory_is_never_overwritten(tmp_path, simulate_env):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "precious.txt").write_text("keep me")
    result = simulate("--set", f"output.run_dir={run_dir}", env=simulate_env)
    assert result.returncode == 2 and "output.run_dir" in result.stderr
    assert (run_dir / "precious.txt").read_text() == "keep me"


def test_print_config_shows_every_default(simulate_env):
    result = simulate("--print-config", "--set", "rounds=7", env=simulate_env)
    assert result.returncode == 0
    printed = yaml.safe_load(result.stdout)
    assert printed["rounds"] == 7 and printed["server"]["aggregator"] == {"name": "fedavg", "weighted": True}


def weighted_mse(rows: list[dict]) -> float:
    """The example-weighted mean MSE over clients: what the run summary reports."""
    return sum(r["mse"] * r["num_examples"] for r in rows) / sum(r["num_examples"] for r in rows)


def tiny_run(tmp_path, name: str, env: dict, *extra: str) -> tuple[subprocess.CompletedProcess, object]:
    run_dir = tmp_path / name
    overrides = [*TINY_OVERRIDES, "rounds=2", f"output.run_dir={run_dir}", *extra]
    result = simulate(*set_args(overrides), env=env)
    return result, run_dir


@pytest.mark.slow
def test_two_round_run_writes_the_run_directory_and_is_reproducible(tmp_path, simulate_env):
    first, run_dir = tiny_run(tmp_path, "first", simulate_env)
    assert first.returncode == 0, first.stderr[-2000:]
    for name in ("config.yaml", "metrics.jsonl", "server.jsonl", "encoder.pt", "summary.json", "summary.md"):
        assert (run_dir / name).is_file(), name
    assert "| task" in first.stdout and "run directory:" in first.stdout

    rows = read_rows(run_dir / "metrics.jsonl")
    assert {(r["split"], r["round"]) for r in rows} == {
        ("eval", 0),
        ("train", 1),
        ("eval", 1),
        ("train", 2),
        ("eval", 2),
    }
    # client c holds tasks c and c+1 (mod 4): every (round, split) has one row per held task per client
    eval_final = {(r["client"], r["task"]) for r in rows if r["split"] == "eval" and r["round"] == 2}
    assert eval_final == TINY_CLIENT_TASKS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {t["task"] for t in summary["tasks"]} == {"anchor", "aligned", "orthogonal", "opposed"}
    server_rows = read_rows(run_dir / "server.jsonl")
    assert [r["round"] for r in server_rows] == [1, 2] and all(r["replies"] == 3 for r in server_rows)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["rounds"] == 2
    assert_no_leftover_processes(simulate_env)

    eval_rows = [r for r in rows if r["split"] == "eval" and r["round"] == 2 and r["task"] == "aligned"]
    expected = weighted_mse(eval_rows)
    aligned = next(t for t in summary["tasks"] if t["task"] == "aligned")
    assert aligned["value_final"] == pytest.approx(expected) and aligned["clients"] == 2
    assert "personal" not in summary  # only soft sharing evaluates personalised copies

    # reproducible, and the same without Ray (tests/test_direct_engine.py compares the Ray engines)
    second, run_dir2 = tiny_run(tmp_path, "second", simulate_env, IN_PROCESS)
    assert second.returncode == 0
    assert (run_dir / "metrics.jsonl").read_bytes() == (run_dir2 / "metrics.jsonl").read_bytes()
    assert_no_leftover_processes(simulate_env)


@pytest.mark.slow
def test_soft_sharing_summarises_the_personalised_copies_apart(tmp_path, simulate_env):
    result, run_dir = tiny_run(tmp_path, "soft", simulate_env, "model.sharing={name: soft, mu: 0.1}", IN_PROCESS)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [r for r in read_rows(run_dir / "metrics.jsonl") if r["round"] == 2 and r["task"] == "anchor"]
    summary = json.loads((run_dir / "summary.json").read_text())
    for key, split in (("tasks", "eval"), ("personal", "personal")):
        expected = weighted_mse([r for r in rows if r["split"] == split])
        anchor = next(t for t in summary[key] if t["task"] == "anchor")
        assert anchor["value_final"] == pytest.approx(expected), key
    assert "## Personalised copies" in (run_dir / "summary.md").read_text()
    assert_no_leftover_processes(simulate_env)


@pytest.mark.slow
def test_csv_metrics_format(tmp_path, simulate_env):
    result, run_dir = tiny_run(tmp_path, "csv", simulate_env, "output.metrics_format=csv", "rounds=1", IN_PROCESS)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_rows(run_dir / "metrics.csv")
    assert rows and {"round", "split", "client", "task", "loss"} <= set(rows[0])
    assert_no_leftover_processes(simulate_env)
