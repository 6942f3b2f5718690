"""A memory budget for the clients' private state in the driver (``simulation.engine.state_memory_mb``):
past it, contexts used longest ago are dropped and their clients read their state back from disk, so
the run's results are the ones without a budget."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fedmtl.config.engines import InProcessEngine
from fedmtl.config.loading import load_config
from fedmtl.core.errors import ConfigError
from fedmtl.core.files import read_rows
from fedmtl.core.timeline import TIMELINE_VAR
from fedmtl.runfiles.rundir import RunDirectory
from server.simulation import federate
from tests.helpers import tiny_overrides

TIMING = ("seconds", "started_at")


def run(tmp_path, name: str, state_memory_mb: float | None, monkeypatch) -> tuple[list, list, list[dict]]:
    timeline = tmp_path / f"{name}.timeline.jsonl"
    monkeypatch.setenv(TIMELINE_VAR, str(timeline))
    cfg = load_config(
        None,
        [*tiny_overrides(6), "rounds=4", "server.fraction_fit=0.5", f"output.run_dir={tmp_path / name}"],
    )
    cfg = replace(cfg, simulation=replace(cfg.simulation, engine=InProcessEngine(state_memory_mb=state_memory_mb)))
    federate(cfg, RunDirectory.create(cfg), echo=lambda line: None)
    server = [{k: v for k, v in row.items() if k not in TIMING} for row in read_rows(tmp_path / name / "server.jsonl")]
    steps = [json.loads(line) for line in timeline.read_text().splitlines()] if timeline.exists() else []
    return read_rows(tmp_path / name / "metrics.jsonl"), server, steps


def test_a_budget_smaller_than_one_clients_heads_gives_the_run_without_a_budget(tmp_path, monkeypatch) -> None:
    metrics, server, steps = run(tmp_path, "unlimited", None, monkeypatch)
    assert not [s for s in steps if s["step"] == "state_restored"]  # every state stayed in memory
    tight_metrics, tight_server, tight_steps = run(tmp_path, "tight", 1e-4, monkeypatch)  # 104 bytes: none stays
    restored = [s for s in tight_steps if s["step"] == "state_restored"]
    assert len(restored) >= 6  # clients read their heads back from disk, in training and in evaluation
    assert tight_metrics == metrics and tight_server == server


def test_a_budget_that_is_not_positive_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^simulation\.engine\.state_memory_mb: must be > 0"):
        load_config(None, ["simulation.engine.state_memory_mb=0"])
    with pytest.raises(ConfigError, match=r"^simulation\.engine\.state_memory_mb: unknown key"):
        load_config(None, ["simulation.engine={name: flower, state_memory_mb: 1}"])  # Flower keeps its own
