"""Study arms and the study/sweep runner: same data in every arm, every report file, resumable."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fedmtl.config.expansion import arm_config
from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.experiments.runner import run_study, run_sweep
from fedmtl.local.data import client_data, participant_data
from fedmtl.report.report import write_report
from fedmtl.report.sweep import write_sweep_report
from tests.helpers import (
    TINY_CLIENT_TASKS,
    TINY_OVERRIDES,
    assert_no_leftover_processes,
    federate_in_process,
    set_args,
    simulate,
)


def run_and_report(cfg, study_dir, echo=lambda line: None) -> dict:
    """A study on the in-process engine, then its report (as simulate.py does)."""
    run_study(cfg, study_dir, federate_in_process, echo)
    return write_report(study_dir)


@pytest.mark.parametrize("suite", [[], ["data.name=digits", "clients.tasks_per_client=3"]], ids=["synthetic", "digits"])
def test_a_task_has_the_same_data_whichever_other_tasks_an_arm_trains(suite):
    full = load_config(None, [*TINY_OVERRIDES, *suite])
    task = full.data.task_names()[1]
    only = load_config(None, [*TINY_OVERRIDES, *suite, f"clients.only_tasks=[{task}]", "clients.members=[0, 1]"])
    for participant in only.participants():
        (client,) = participant.clients
        trained = participant_data(only, participant)
        assert list(trained.train) == [task] and list(trained.evals[0][1]) == [task]
        for a, b in (
            (client_data(full, client).train, trained.train),
            (client_data(full, client).eval, trained.evals[0][1]),
        ):
            assert torch.equal(a[task].x, b[task].x) and torch.equal(a[task].y, b[task].y)


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("study.arms=[fed_mtl, nope]", "study.arms[1]"),
        ("study.arms=[local_stl]", "study.reference_arm"),  # the reference arm fed_mtl is missing
        ("sweep.grid={rounds: [1, 2]}", "sweep"),  # a sweep needs arms to compare
        ("clients.only_tasks=[nope]", "clients.only_tasks[0]"),
        ("clients.members=[0, 7]", "clients.members"),
    ],
)
def test_bad_study_settings_name_their_key(override, path):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*TINY_OVERRIDES, override])
    assert caught.value.path == path


@pytest.mark.parametrize(
    ("arms", "path", "words"),
    [
        ("[fed_mtl, {name: x, set: {server.aggregator.name: nope}}]", "study.arms[1].set", "unknown aggregator 'nope'"),
        ("[fed_mtl, {name: x, set: {data.name: digits}}]", "study.arms[1].set.data.name", "cannot change"),
        ("[fed_mtl, {name: x, base: nope}]", "study.arms[1].base", "unknown base arm"),
        ("[fed_mtl, {name: fed_mtl}]", "study.arms[1].name", "built-in arm"),
        ("[fed_mtl, {name: x, set: {client.lr: 0}}]", "study.arms[1].set", "lr"),
        ("[fed_mtl, {name: x, set: {server.heads_across_tasks: true}}]", "study.arms[1].set", "federate_heads"),
    ],
)
def test_a_bad_user_defined_arm_names_its_entry_before_anything_runs(arms, path, words):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*TINY_OVERRIDES, f"study.arms={arms}"])
    assert caught.value.path == path and words in str(caught.value)


def test_a_user_defined_arm_starts_from_its_base_arms_settings():
    arm = "{name: shared, base: fed_full, set: {server.heads_across_tasks: true}}"
    cfg = load_config(None, ["data.name=digits", "data.tasks=[parity, geq5]", f"study.arms=[fed_mtl, {arm}]"])
    spec = cfg.study.arm_spec("shared")
    shared = arm_config(cfg, spec)
    assert shared.server.federate_heads and shared.server.heads_across_tasks
    assert not arm_config(cfg, cfg.study.arm_spec("fed_mtl")).server.federate_heads


def test_bad_compare_pairs_are_refused():
    with pytest.raises(ConfigError, match="'nope' is not one of the arms") as caught:
        load_config(None, [*TINY_OVERRIDES, "study.arms=[fed_mtl, local_stl]", "study.compare=[[nope, local_stl]]"])
    assert caught.value.path == "study.compare[0]"
    with pytest.raises(ConfigError, match="also swept") as caught:
        arms = "[fed_mtl, {name: x, set: {rounds: 3}}]"
        load_config(None, [*TINY_OVERRIDES, f"study.arms={arms}", "sweep.grid={rounds: [1, 2]}"])
    assert caught.value.path == "study.arms[1].set.rounds"


def test_user_defined_arms_run_their_base_with_their_settings(tmp_path):
    arms = "[local_stl, {name: slow, base: local_stl, set: {client.lr: 0.001}}, {name: fast, base: local_stl}]"
    cfg = load_config(None, [*TINY_OVERRIDES, "rounds=1", f"study.arms={arms}", "study.reference_arm=slow",
                             "study.compare=[[all, local_stl]]"])  # fmt: skip
    summary = run_and_report(cfg, tmp_path)
    manifest = json.loads((tmp_path / "study.json").read_text())
    assert manifest["arm_specs"]["slow"] == {"base": "local_stl", "set": {"client.lr": 0.001}}
    assert manifest["single_task_arms"] == ["local_stl", "slow", "fast"]
    assert manifest["pairs"] == [["slow", "local_stl"], ["fast", "local_stl"]]
    assert [(c["arm"], c["baseline"]) for c in summary["comparisons"]] == [("slow", "local_stl"), ("fast", "local_stl")]

    def eval_rows(arm: str) -> list[dict]:
        return [r for r in read_rows(tmp_path / f"arms/{arm}/seed-0/metrics.jsonl") if r["split"] == "eval"]

    assert eval_rows("fast") == eval_rows("local_stl")  # nothing set: the base arm itself
    assert eval_rows("slow") != eval_rows("local_stl")
    assert "lr: 0.001" in (tmp_path / "arms/slow/seed-0/config.yaml").read_text()


def test_an_invalid_sweep_value_names_the_grid_entry():
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*TINY_OVERRIDES, "study.arms=[local_stl, fed_mtl]", "sweep.grid={rounds: [2, 0]}"])
    assert caught.value.path == "sweep.grid.rounds[1]"


def test_in_process_arms_and_a_sweep_write_every_report_file(tmp_path):
    overrides = [*TINY_OVERRIDES, "rounds=2", "study.arms=[local_stl, central_mtl]", "study.reference_arm=central_mtl",
                 "study.seeds=[0, 1]", "sweep.grid={data.task_cosine: [0.8, 0.2]}"]  # fmt: skip
    cfg = load_config(None, overrides)
    lines: list[str] = []
    run_sweep(cfg, tmp_path, federate_in_process, lines.append, on_study_done=write_report)
    rows = write_sweep_report(tmp_path)
    for name in ("sweep.json", "sweep.md", "sweep.csv", "sweep.png"):
        assert (tmp_path / name).is_file(), name
    assert rows  # the combined table
    for point in ("points/0", "points/1"):
        for name in ("report.md", "report.html", "summary.json", "study.json", "config.yaml"):
            assert (tmp_path / point / name).is_file(), (point, name)
        metrics = read_rows(tmp_path / point / "arms/local_stl/seed-0/metrics.jsonl")
        final = {(r["client"], r["task"]) for r in metrics if r["split"] == "eval" and r["round"] == 2}
        assert final == TINY_CLIENT_TASKS
    assert "task_cosine: 0.2" in (tmp_path / "points/1/config.yaml").read_text()
    assert [line.split(" ", 2)[1] for line in lines if "seed" in line] == [f"[{i}/8]" for i in range(1, 9)]
    assert "left |" in lines[1] and lines[-1].count("done |") == 1  # an estimate while runs remain

    # everything finished: running again does no work and rewrites the same report
    report = (tmp_path / "sweep.md").read_text()
    again: list[str] = []
    run_sweep(cfg, tmp_path, federate_in_process, again.append, on_study_done=write_report)
    write_sweep_report(tmp_path)
    assert not any("/8]" in line for line in again)
    assert (tmp_path / "sweep.md").read_text() == report


def test_an_interrupted_study_redoes_only_unfinished_runs(tmp_path):
    cfg = load_config(
        None, [*TINY_OVERRIDES, "rounds=1", "study.arms=[local_stl, central_mtl]", "study.reference_arm=central_mtl"]
    )
    run_and_report(cfg, tmp_path)
    manifest = json.loads((tmp_path / "study.json").read_text())
    manifest["runs"][1]["status"] = "pending"  # as if killed while central_mtl ran
    (tmp_path / "study.json").write_text(json.dumps(manifest))
    (tmp_path / manifest["runs"][1]["dir"] / "metrics.jsonl").write_text("{broken")
    lines: list[str] = []
    run_and_report(cfg, tmp_path, lines.append)
    assert [line.split(" | ")[1].split(":")[0] for line in lines] == ["central_mtl seed 0"]
    assert read_rows(tmp_path / manifest["runs"][1]["dir"] / "metrics.jsonl")


@pytest.mark.slow
def test_every_arm_through_simulate_py(tmp_path, simulate_env):
    study_dir = tmp_path / "study"
    arms = "[local_stl, fed_stl, fed_mtl, fed_full, central_mtl, {name: pcgrad, set: {server.aggregator: pcgrad}}]"
    overrides = [*TINY_OVERRIDES, "rounds=2", f"study.arms={arms}", "study.seeds=[0, 1]",
                 f"output.run_dir={study_dir}"]  # fmt: skip
    result = simulate(*set_args(overrides), env=simulate_env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(re.findall(r"\[\d+/12\] .* \| \w+ seed \d: anchor mse", result.stdout)) == 12
    for name in (
        "report.md",
        "report.html",
        "summary.json",
        "plots/learning_curves.png",
        "plots/forest.png",
        "plots/conflict_fraction.png",
    ):
        assert (study_dir / name).is_file(), name
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["arms"] == ["local_stl", "fed_stl", "fed_mtl", "fed_full", "central_mtl", "pcgrad"]
    assert "name: pcgrad" in (study_dir / "arms/pcgrad/seed-0/config.yaml").read_text()
    assert "name: fedavg" in (study_dir / "arms/fed_mtl/seed-0/config.yaml").read_text()
    assert set(summary["conflict"]) == set(summary["arms"])  # every arm's conflict diagnostics, machine-readable

    def final(arm: str, seed: int) -> dict:
        rows = read_rows(study_dir / f"arms/{arm}/seed-{seed}/metrics.jsonl")
        return {
            (r["client"], r["task"]): r["mse"]
            for r in rows
            if r["split"] == "eval" and r["round"] == 2 and r["mse"] is not None
        }

    # anchor is held by client 0 alone: its single-task federation is local training
    for seed in (0, 1):
        assert final("fed_stl", seed)[(0, "anchor")] == pytest.approx(final("local_stl", seed)[(0, "anchor")], rel=1e-4)

    def bytes_up(arm: str) -> int:
        return sum(r["bytes_up"] for r in read_rows(study_dir / f"arms/{arm}/seed-0/server.jsonl"))

    assert bytes_up("fed_full") > bytes_up("fed_mtl") > 0  # heads on the wire cost bytes
    assert bytes_up("pcgrad") == bytes_up("fed_mtl")  # the same messages, aggregated differently
    assert final("pcgrad", 0) != final("fed_mtl", 0)
    assert_no_leftover_processes(simulate_env)
