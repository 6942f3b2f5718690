"""Ray GPU placement on a machine without GPUs: Ray takes a declared GPU count on trust and sets
``CUDA_VISIBLE_DEVICES`` per worker, so placement is testable on CPU (torch still sees no GPU,
so clients train on CPU). Clients report the first id Ray gave them (``assigned-gpu``), recorded
as ``assigned_gpu`` in ``clients.jsonl``."""

from __future__ import annotations

import time

import pytest

from fedmtl.core.files import read_rows
from tests.helpers import RAY_PRIVATE_ENV, TAG_VAR, set_args, simulate, stop_tagged, tagged_processes, tiny_overrides


def test_asking_for_more_gpus_than_declared_is_one_line_and_exit_2(simulate_env):
    result = simulate("--set", "resources.num_gpus=2", "--set", "resources.client_gpus=3", env=simulate_env)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "resources.client_gpus" in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_half_gpu_clients_are_spread_over_both_declared_gpus(tmp_path, simulate_env):
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_overrides(4),
        "rounds=1",
        # 4 CPUs and 2 GPUs declared (Ray takes both on trust): room for 4 workers at 0.5 GPU each
        "resources.num_cpus=4",
        "resources.num_gpus=2",
        "resources.client_gpus=0.5",
        f"output.run_dir={run_dir}",
    ]
    # simulate_env's tag marks simulate.py and everything it starts (Ray): none of it may outlive it
    tag = simulate_env[TAG_VAR]
    env = {**simulate_env, **RAY_PRIVATE_ENV}
    try:
        result = simulate(*set_args(overrides), env=env)
        deadline = time.monotonic() + 20
        while (left := tagged_processes(tag)) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop_tagged(tag)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not left, "processes outlived simulate.py"
    rows = read_rows(run_dir / "clients.jsonl")
    assert {(r["round"], r["client"]) for r in rows} == {(1, c) for c in range(4)}
    # 4 workers at 0.5 GPU fill both GPUs, and the direct engine hands the round's 4 messages to the 4
    # idle workers at once (one message per worker, whatever their speed): two clients on each GPU
    assert sorted(r["assigned_gpu"] for r in rows) == [0.0, 0.0, 1.0, 1.0], rows
    assert all(r["on_gpu"] == 0.0 for r in rows), "torch sees no GPU here: clients must train on CPU"
