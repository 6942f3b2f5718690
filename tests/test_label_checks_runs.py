"""The label checks on real runs (fedmtl/report/label_checks.py): noisy, disagreeing and drifting labels
injected on three of eight holders of a task are flagged where they sit, and clean runs are quiet, over
three seeds."""

from __future__ import annotations

import pytest

from fedmtl.config.loading import load_config
from fedmtl.experiments.runner import run_study
from fedmtl.report.collect import collect_study
from fedmtl.report.label_checks import label_checks
from tests.helpers import federate_in_process, tiny_overrides

ISSUES = (
    "data_issues=[{name: label_noise, task: anchor, clients: [1], scale: 3.0},"
    " {name: annotation, task: anchor, clients: [3], scale: -1.0, offset: 2.0},"
    " {name: drift, task: anchor, clients: [5], per_round: 2.0, start_round: 4}]"
)


def flags(tmp_path, *extra: str) -> set[tuple[str, str, int]]:
    cfg = load_config(
        None,
        [
            *tiny_overrides(8),
            f"clients.tasks={[['anchor']] * 8}",
            "clients.samples_per_task=64",
            "rounds=4",
            "eval_every=1",
            "study.arms=[fed_full, local_stl]",
            "study.reference_arm=fed_full",
            "study.seeds=[0, 1, 2]",
            *extra,
        ],
    )
    tmp_path.mkdir()
    run_study(cfg, tmp_path, federate_in_process, lambda line: None)
    return {(c.name, c.arm, c.client) for c in label_checks(collect_study(tmp_path)) if c.flagged}


@pytest.mark.slow
def test_each_check_flags_its_issue_where_it_sits_and_clean_runs_are_quiet(tmp_path):
    assert flags(tmp_path / "clean") == set()
    found = flags(tmp_path / "issues", ISSUES)
    assert {
        ("noisy labels", "fed_full", 1),
        ("noisy labels", "local_stl", 1),
        ("disagreeing labels", "fed_full", 3),  # averaged heads cannot follow its standard
        ("drifting labels", "fed_full", 5),
        ("drifting labels", "local_stl", 5),
    } <= found
    assert {client for _, _, client in found} == {1, 3, 5}  # no clean holder is flagged
    assert ("disagreeing labels", "local_stl", 3) not in found  # training alone learns its own standard
