"""The warm ClientApp host (``clients.deployed_app``, ``clients.warm_host``): a federation through it equals
one run in process, it ends with its owner or when idle, a host that died is replaced, a message whose host
dies fails in one line, strangers are refused, and bad node config is named. In process (a loopback grid),
so the host's owner is this test process; ``tests/test_deployment*.py`` run it under real SuperNodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import pytest
import torch

from clients import deployed_app
from clients.deployed_app import DeployedClientApp, HostFiles, warm_settings
from fedmtl.core.files import read_rows
from fedmtl.core.timeline import TIMELINE_VAR
from tests.helpers import tiny_overrides
from tests.loopback import run_in_process

RUN = (*tiny_overrides(2), "rounds=2", "eval_every=1")
WARM = {"warm-clientapp": True}


def wait_for(condition, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.fixture
def warm_app():
    """Hosts owned by this test process; stopped afterwards, their files in the shared directory removed."""
    app = DeployedClientApp(owner=os.getpid)
    yield app
    app.stop_hosts()
    forget(HostFiles.of_owner(os.getpid()))


def forget(files: HostFiles) -> None:
    for path in files.all():
        path.unlink(missing_ok=True)


def test_a_federation_through_the_warm_host_equals_one_in_process(tmp_path, warm_app, monkeypatch):
    timeline = tmp_path / "timeline.jsonl"
    monkeypatch.setenv(TIMELINE_VAR, str(timeline))  # the host inherits it: its steps name its pid
    cold = run_in_process(tmp_path, "cold", *RUN, nodes=2, client_app=warm_app, node_config={"warm-clientapp": False})
    assert warm_app.started == []  # warm-clientapp=false: handled in this process
    warm = run_in_process(tmp_path, "warm", *RUN, nodes=2, client_app=warm_app, node_config=WARM)
    assert read_rows(warm / "metrics.jsonl") == read_rows(cold / "metrics.jsonl")
    ours, theirs = (torch.load(d / "encoder.pt", weights_only=True) for d in (warm, cold))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [p.name for p in sorted((tmp_path / "warm-state").iterdir())] == ["client-0", "client-1"]
    # one host served every warm message, started once; the cold run's handlers ran here
    [host] = warm_app.started
    steps = [json.loads(line) for line in timeline.read_text().splitlines()]
    handler_pids = [s["pid"] for s in steps if s["step"] == "clientapp_handler"]
    assert handler_pids == [os.getpid()] * 4 + [host.pid] * 4  # 2 nodes x 2 training rounds, cold then warm
    assert {s["pid"] for s in steps if s["step"] == "clientapp_entry"} == {os.getpid()}


def test_a_host_that_dies_mid_message_fails_that_message_in_one_line_and_the_next_starts_a_new_one(tmp_path, warm_app):
    killing = ("faults.worker_kill_round=2", "faults.worker_kill_client=1")  # os._exit in client 1's round 2
    run_dir = run_in_process(tmp_path, "run", *RUN, "rounds=3", *killing, nodes=2, client_app=warm_app,
                             node_config=WARM)  # fmt: skip
    rows = {r["round"]: r for r in read_rows(run_dir / "server.jsonl")}
    assert rows[2]["failures"] == 1, rows[2]
    [reason] = rows[2]["failed"]
    assert "the warm ClientApp host died while handling the message; its log: " in reason and "\n" not in reason
    assert rows[3]["failures"] == 0 and rows[3]["replies"] == 2, rows[3]
    first, second = warm_app.started
    assert first.poll() is not None and second.poll() is None


def test_the_host_ends_with_its_owner_and_when_idle_and_removes_its_socket_and_key():
    owner = subprocess.Popen(["sleep", "60"])
    app, idle = DeployedClientApp(owner=lambda: owner.pid), DeployedClientApp(owner=os.getpid)
    files, idle_files = HostFiles.of_owner(owner.pid), HostFiles.of_owner(os.getpid())
    try:
        app.connect(files, owner.pid, idle_s=600).close()  # started; a connection that sends nothing is dropped
        [host] = app.started
        assert files.socket.exists() and files.key.stat().st_mode & 0o777 == 0o600
        owner.kill()
        owner.wait()
        assert wait_for(lambda: host.poll() is not None) and host.returncode == 0
        assert not files.socket.exists() and not files.key.exists()
        idle.connect(idle_files, os.getpid(), idle_s=0.5).close()
        assert wait_for(lambda: idle.started[0].poll() is not None) and not idle_files.socket.exists()
    finally:
        owner.kill()
        app.stop_hosts()
        idle.stop_hosts()
        forget(files)
        forget(idle_files)


def test_a_killed_host_is_replaced_and_strangers_are_refused(warm_app):
    files = HostFiles.of_owner(os.getpid())
    warm_app.connect(files, os.getpid(), idle_s=600).close()
    first = warm_app.started[0]
    with pytest.raises(AuthenticationError):
        Client(str(files.socket), family="AF_UNIX", authkey=b"not the key")
    warm_app.connect(files, os.getpid(), idle_s=600).close()  # the host served on after the stranger
    assert len(warm_app.started) == 1
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    warm_app.connect(files, os.getpid(), idle_s=600).close()  # a stale socket: a new host
    assert len(warm_app.started) == 2 and warm_app.started[1].poll() is None


def test_a_host_that_cannot_start_fails_the_message_in_one_line_naming_its_log(warm_app, monkeypatch):
    monkeypatch.setattr(deployed_app, "HOST_MODULE", "clients.no_such_host")  # a broken installation
    files = HostFiles.of_owner(os.getpid())
    with pytest.raises(RuntimeError) as raised:
        warm_app.connect(files, os.getpid(), idle_s=600)
    assert str(raised.value) == f"the warm ClientApp host did not start (exit code 1); its log: {files.log}"
    assert "No module named clients.no_such_host" in files.log.read_text()


def test_the_host_directory_is_private(tmp_path, monkeypatch):
    monkeypatch.setattr(deployed_app.tempfile, "gettempdir", lambda: str(tmp_path))
    assert deployed_app.private_directory().stat().st_mode & 0o777 == 0o700
    deployed_app.private_directory().chmod(0o755)
    with pytest.raises(PermissionError, match="closed to others"):
        deployed_app.private_directory()


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"warm-clientapp": "maybe"}, "node config warm-clientapp must be true or false, got 'maybe'"),
        ({"warm-idle-s": 0}, "node config warm-idle-s must be a number of seconds > 0, got 0"),
        ({"warm-idle-s": True}, "node config warm-idle-s must be a number of seconds > 0, got True"),
        ({"warm-idle-s": "soon"}, "node config warm-idle-s must be a number of seconds > 0, got 'soon'"),
    ],
)
def test_bad_node_config_is_named(node_config, message):
    with pytest.raises(ValueError) as raised:
        warm_settings(node_config)
    assert str(raised.value) == message


def test_warm_settings_default_to_a_process_per_message():
    assert warm_settings({}) == (False, 300.0)
    assert warm_settings({"warm-clientapp": True, "warm-idle-s": 5}) == (True, 5.0)


def test_the_forwarding_clientapp_imports_neither_torch_nor_fedmtls_client():
    code = "import sys, clients.deployed_app; print(sorted(m for m in ('torch', 'clients.client_app') if m in sys.modules))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
