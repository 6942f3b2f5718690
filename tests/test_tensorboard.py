"""The optional TensorBoard view: the recorder mirrors its rows as scalars; off by default; a clear
config error when the package is missing."""

from __future__ import annotations

import importlib.util

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedmtl.config.loading import load_config
from fedmtl.core import protocol
from fedmtl.core.errors import ConfigError
from fedmtl.core.layout import TENSORBOARD_DIR
from fedmtl.federation.server_update import RoundDiagnostics
from fedmtl.runfiles.recorder import Recorder
from fedmtl.runfiles.rundir import RunDirectory
from tests.helpers import TINY_OVERRIDES


def _report(client: int, mse: float, examples: float) -> dict:
    metrics = {"a": {"loss": mse, "mse": mse, "num_examples": examples}}
    return {protocol.CLIENT_ID: float(client), **protocol.flatten_task_metrics(protocol.EVAL, metrics)}


def test_recorded_rows_reach_tensorboard_as_example_weighted_means(tmp_path):
    cfg = load_config(None, [*TINY_OVERRIDES, "output.tensorboard=true", f"output.run_dir={tmp_path / 'run'}"])
    run = RunDirectory.create(cfg)
    recorder = Recorder(run)
    recorder.record_clients(0, protocol.EVAL, [_report(0, 1.0, 10), _report(1, 4.0, 30)])
    diagnostics = RoundDiagnostics((0, 1), None, (0.5,), 0.0, 2.0, 1.0)
    recorder.record_server(1, 2, 0, [], diagnostics, {"bytes_up": 100, "bytes_down": 200})
    events = EventAccumulator(str(run.path / TENSORBOARD_DIR))
    events.Reload()
    [mse] = events.Scalars("eval/a/mse")
    assert (mse.step, mse.value) == (0, pytest.approx((10 * 1.0 + 30 * 4.0) / 40))  # as the run summary weights clients
    assert events.Scalars("server/aggregate_norm")[0].value == pytest.approx(2.0)
    assert events.Scalars("server/bytes_down")[0].value == pytest.approx(200)


def test_off_by_default_and_no_event_files(tmp_path):
    run = RunDirectory.create(load_config(None, [*TINY_OVERRIDES, f"output.run_dir={tmp_path / 'run'}"]))
    Recorder(run).record_clients(0, protocol.EVAL, [_report(0, 1.0, 10)])
    assert not (run.path / TENSORBOARD_DIR).exists()


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
    cfg = load_config(None, [*TINY_OVERRIDES, "output.tensorboard=true", f"output.run_dir={tmp_path / 'run'}"])
    run = RunDirectory.create(cfg)
    first = Recorder(run)
    for server_round in (1, 2, 3):
        first.record_clients(server_round, protocol.EVAL, [_report(0, float(server_round), 10)])
    first.close()
    resumed = Recorder(run, resume_after=1)  # the checkpoint was after round 1: rounds 2.. are redone
    resumed.record_clients(2, protocol.EVAL, [_report(0, 20.0, 10)])
    resumed.close()
    events = EventAccumulator(str(run.path / TENSORBOARD_DIR))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("eval/a/mse")] == [(1, 1.0), (2, 20.0)]
