"""Shared fixtures: tiny configs, Flower message helpers, offline environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.offline import OFFLINE_ENV  # noqa: E402

os.environ.update(OFFLINE_ENV)

TINY_OVERRIDES = (
    "clients.count=3",
    "clients.samples_per_task=32",
    "clients.eval_samples_per_task=32",
    "client.local_steps=2",
    "client.batch_size=16",
    "model.encoder_hidden=[8]",
    "model.representation_dim=4",
    "model.head_hidden=[]",
)


@pytest.fixture
def tiny_config():
    from fedmtl.config import load_config

    return load_config(None, list(TINY_OVERRIDES))


@pytest.fixture
def flower_identity():
    """Messages built outside a running Flower app need the process's task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def simulate_env(tmp_path):
    """Environment for simulate.py subprocesses: offline, Flower home inside the test's tmp dir."""
    env = dict(os.environ, **OFFLINE_ENV, FLWR_HOME=str(tmp_path / "flwr-home"), PYTHONUNBUFFERED="1")
    return env
