"""The optional TensorBoard view: a callback mirrors the recorded rows as scalars; off by default; a clear
config error when the package is missing."""

from __future__ import annotations

import importlib.util

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.core.layout import TENSORBOARD_DIR
from fedmtl.driver.recording import task_rows
from fedmtl.driver.tensorboard import TensorBoardSink
from fedmtl.runfiles.rundir import RunDirectory
from tests.helpers import TINY_OVERRIDES


def _report(client: int, mse: float, examples: float) -> dict:
    metrics = {"a": {"loss": mse, "mse": mse, "num_examples": examples}}
    return {protocol.CLIENT_ID: float(client), **protocol.flatten_task_metrics(protocol.EVAL, metrics)}


def _rows(server_round: int, *reports: dict) -> list[dict]:
    return [row for report in reports for row in task_rows(server_round, protocol.EVAL, report)]


def test_recorded_rows_reach_tensorboard_as_example_weighted_means(tmp_path):
    sink = TensorBoardSink(tmp_path)
    sink.metric_rows(_rows(0, _report(0, 1.0, 10), _report(1, 4.0, 30)))
    sink.server_row({"round": 1, "aggregate_norm": 2.0, "bytes_down": 200, "rejected": []})
    sink.close()
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    [mse] = events.Scalars("eval/a/mse")
    assert (mse.step, mse.value) == (0, pytest.approx((10 * 1.0 + 30 * 4.0) / 40))  # as the run summary weights clients
    assert events.Scalars("server/aggregate_norm")[0].value == pytest.approx(2.0)
    assert events.Scalars("server/bytes_down")[0].value == pytest.approx(200)


@pytest.mark.parametrize("on", [True, False])
def test_a_run_writes_event_files_only_when_asked(tmp_path, on):
    from tests.loopback import run_in_process

    run_dir = run_in_process(tmp_path, "run", *TINY_OVERRIDES, "rounds=2", f"output.tensorboard={str(on).lower()}")
    assert (run_dir / TENSORBOARD_DIR).exists() == on
    if on:
        events = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
        events.Reload()
        assert [s.step for s in events.Scalars("eval/anchor/mse")] == [0, 1, 2]
        assert [s.step for s in events.Scalars("server/seconds")] == [1, 2]


def test_missing_package_is_a_config_error_naming_the_key_before_anything_is_written(tmp_path, monkeypatch):
    from fedmtl.runfiles import rundir

    real = importlib.util.find_spec
    monkeypatch.setattr(rundir, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    cfg = load_config(None, ["output.tensorboard=true", f"output.run_dir={tmp_path / 'run'}"])  # clients parse it too
    with pytest.raises(ConfigError) as caught:
        RunDirectory.create(cfg)
    assert caught.value.path == "output.tensorboard" and "pip install" in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_purges_the_event_points_after_its_checkpoint(tmp_path):
    first = TensorBoardSink(tmp_path)
    for server_round in (1, 2, 3):
        first.metric_rows(_rows(server_round, _report(0, float(server_round), 10)))
    first.close()
    resumed = TensorBoardSink(tmp_path, resume_after=1)  # the checkpoint was after round 1: rounds 2.. are redone
    resumed.metric_rows(_rows(2, _report(0, 20.0, 10)))
    resumed.close()
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("eval/a/mse")] == [(1, 1.0), (2, 20.0)]
