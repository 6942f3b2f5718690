"""Shared fixtures (helpers live in tests/helpers.py): tiny config, Flower task identity, tagged environments."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.runtime.offline import OFFLINE_ENV  # noqa: E402

os.environ.update(OFFLINE_ENV)

from tests.helpers import TAG_VAR, TINY_OVERRIDES, stop_tagged, tagged_env  # noqa: E402

# Property-based tests (Hypothesis): by default the same examples on every run, so that CI is
# reproducible; `pytest --hypothesis-profile=explore` searches afresh with ten times more examples.
settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", max_examples=400, deadline=None)
settings.load_profile("default")


@pytest.fixture
def tiny_config():
    from fedmtl.config.loading import load_config

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
    """Tagged environment; whatever carries the tag is stopped after the test, also when it failed."""
    env = tagged_env(tmp_path / "flwr-home")
    yield env
    stop_tagged(env[TAG_VAR])


@pytest.fixture(scope="module")
def module_env(tmp_path_factory):
    """:func:`simulate_env` shared by the tests of one module (their runs reused across tests)."""
    env = tagged_env(tmp_path_factory.mktemp("flwr-home"))
    yield env
    stop_tagged(env[TAG_VAR])
