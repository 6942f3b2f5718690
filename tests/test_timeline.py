"""The deployment benchmark's timestamps (fedmtl/core/timeline.py): off by default, and when on, every
training round's steps from the ServerApp and the ClientApp, in order."""

from __future__ import annotations

import json
import os
import time

from fedmtl.config.loading import load_config
from fedmtl.core import timeline
from tests.helpers import federate_in_process, tiny_overrides


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(timeline.TIMELINE_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    timeline.mark("anything", round=1)
    assert not timeline.enabled() and list(tmp_path.iterdir()) == []


def test_marks_are_json_lines_with_the_wall_time_and_the_process(tmp_path, monkeypatch):
    path = tmp_path / "timeline.jsonl"
    monkeypatch.setenv(timeline.TIMELINE_VAR, str(path))
    before = time.time()
    timeline.mark("a", round=3)
    timeline.mark("b", partition=1)
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["step"] == "a" and first["round"] == 3 and first["pid"] == os.getpid()
    assert before <= first["t"] <= second["t"] <= time.time() and second["partition"] == 1


def test_the_process_start_is_in_the_past_and_before_this_test():
    started = timeline.process_started_at()
    assert started is not None  # Linux: read from /proc
    assert started <= time.time() - 0.01  # the interpreter ran for a while before this line
    assert time.time() - started < 24 * 3600


def test_a_run_marks_every_training_rounds_steps_in_order(tmp_path, monkeypatch):
    path = tmp_path / "timeline.jsonl"
    monkeypatch.setenv(timeline.TIMELINE_VAR, str(path))
    cfg = load_config(None, [*tiny_overrides(2), "rounds=2", f"output.run_dir={tmp_path / 'run'}"])
    federate_in_process(cfg)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    sends = [line for line in lines if line["step"] == "server_send" and line["kind"] == "train"]
    assert [line["round"] for line in sends] == [1, 2]
    for round_ in (1, 2):
        for partition in (0, 1):
            steps = [line for line in lines if line.get("round") == round_ and line.get("partition") == partition]
            assert [line["step"] for line in steps] == [
                "clientapp_handler",
                "train_start",
                "train_end",
                "clientapp_reply",
            ]
            assert [line["t"] for line in steps] == sorted(line["t"] for line in steps)
            assert steps[0]["process_started"] <= steps[0]["t"]
        send = next(line for line in sends if line["round"] == round_)
        replies = next(line for line in lines if line["step"] == "server_replies" and line["round"] == round_)
        client_times = [line["t"] for line in lines if line.get("round") == round_ and "partition" in line]
        assert send["t"] <= min(client_times) and max(client_times) <= replies["t"]
