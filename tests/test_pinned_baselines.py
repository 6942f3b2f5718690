"""The study arms' numbers, pinned: every arm of ``configs/study_digits.yaml`` and the baselines of
``configs/study_aggregators.yaml`` (shortened to two rounds and one seed) must give exactly the final
evaluation metrics recorded in ``tests/pinned/baselines.json``, row for row. The file was written by
the code before the round driver was unified (every arm through one driver), so a refactor that
changes any number fails here. Numbers agree to a relative 1e-5, not bit for bit: float32 kernels differ
in their last bits between CPUs (an AMD EPYC with AVX-512 gives losses about 1e-7 apart from the
machine the pins were written on, in every arm, unfederated ones included), while a change in
what a run computes moves its final losses by far more.

Regenerate deliberately, after a change that is meant to change results, with
``FEDMTL_WRITE_PINS=1 pytest tests/test_pinned_baselines.py`` (and say why in the commit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedmtl.core.files import read_rows
from tests.helpers import ROOT, set_args, simulate

PINS = Path(__file__).parent / "pinned" / "baselines.json"
STUDIES = {
    "digits": ("configs/study_digits.yaml", ("rounds=2", "eval_every=1", "study.seeds=[0]")),
    "aggregators": (
        "configs/study_aggregators.yaml",
        (
            "rounds=2",
            "eval_every=1",
            "study.seeds=[0]",
            "sweep.grid={}",
            "data.task_cosine=0.0",
            "study.arms=[{name: fedavg, set: {server.aggregator: fedavg}}, "
            "{name: pcgrad, set: {server.aggregator: pcgrad}}, local_stl, fed_stl, central_mtl]",
            "study.compare=[]",
        ),
    ),
}


def final_rows(study_dir: Path) -> dict[str, list]:
    """Arm -> its last evaluation round's rows as (client, task, loss, headline metrics), sorted."""
    pinned = {}
    for run in sorted((study_dir / "arms").iterdir()):
        metrics = next((run / "seed-0").glob("metrics.*"))
        rows = [r for r in read_rows(metrics) if r["split"] == "eval"]
        last = max(r["round"] for r in rows)
        pinned[run.name] = sorted(
            [r["client"], r["task"], r["loss"], r.get("accuracy"), r.get("mse")] for r in rows if r["round"] == last
        )
    return pinned


@pytest.mark.slow
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_the_arms_numbers_are_unchanged(study, tmp_path, module_env):
    config, overrides = STUDIES[study]
    result = simulate(
        "--config", str(ROOT / config), *set_args((*overrides, f"output.run_dir={tmp_path / study}")), env=module_env,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = final_rows(tmp_path / study)
    if os.environ.get("FEDMTL_WRITE_PINS"):
        pins = json.loads(PINS.read_text()) if PINS.is_file() else {}
        PINS.parent.mkdir(exist_ok=True)
        PINS.write_text(json.dumps({**pins, study: got}, indent=1) + "\n")
        pytest.skip(f"wrote {PINS}")
    pinned = json.loads(PINS.read_text())[study]
    assert sorted(got) == sorted(pinned)
    for arm, rows in pinned.items():
        # the same (client, task) rows with the same metrics present, then the numbers to rel 1e-5
        assert [present(row) for row in got[arm]] == [present(row) for row in rows], arm
        assert [numbers(row) for row in got[arm]] == [pytest.approx(numbers(row), rel=1e-5) for row in rows], arm


def present(row: list) -> list:
    """(client, task) and which of loss, accuracy, mse the row has."""
    return [*row[:2], *(value is not None for value in row[2:])]


def numbers(row: list) -> list[float]:
    return [value for value in row[2:] if value is not None]
