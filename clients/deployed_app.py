"""The ClientApp a SuperNode loads (``pyproject.toml``'s clientapp component): it runs fedmtl's ClientApp
(``clients.client_app``) in this process, or, with ``warm-clientapp=true`` in the SuperNode's node config,
hands each message to the node's warm ClientApp host (``clients.warm_host``).

Why: Flower 1.41's process isolation starts a fresh ``flwr-clientapp`` process for every message, which
then imports torch and fedmtl (2.5 s on this 2-core machine) and pays a fresh process's first training
steps, torch's lazy ``torch._dynamo`` import among them (1.7 s against 0.01 s warm): BENCHMARKS.md
``deployment``. This module imports neither.

A warm host is one long-lived process per SuperNode (per ``flwr-clientapp`` parent: the SuperNode's
SuperExec) and installed app; the first message starts it, later ones reuse it. It serves one message at a
time (messages that arrive together wait their turn) over a Unix socket in a directory only this user can
read, authenticated by a key file only this user can read (``multiprocessing.connection``: an HMAC
challenge, then pickles). It exits when the SuperExec is gone, on SIGTERM, or after ``warm-idle-s``
seconds (default 300) without a message. The handler, its private state and its replies are the same in
either mode: the host calls the same ClientApp on the same (message, context).

Node config (``flower-supernode --node-config "... warm-clientapp=true warm-idle-s=600"``):

* ``warm-clientapp``: ``true`` or ``false`` (default ``false``: Flower's process per message).
* ``warm-idle-s``: seconds a host waits for its next message before it exits (> 0).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import PARTITION_ID_KEY

from fedmtl.core import timeline

WARM = "warm-clientapp"
IDLE = "warm-idle-s"
DEFAULT_IDLE_S = 300.0
START_TIMEOUT_S = 120.0  # importing torch and fedmtl on a loaded 2-core machine: 3-20 s
APP_DIR = Path(__file__).resolve().parents[1]  # the installed app (its FAB's hash is in the path)
HOST_MODULE = "clients.warm_host"


def warm_settings(node_config: dict[str, Any]) -> tuple[bool, float]:
    """(warm on?, idle seconds) from the node config; a ValueError naming the key on a bad value."""
    warm = node_config.get(WARM, False)
    if not isinstance(warm, bool):
        raise ValueError(f"node config {WARM} must be true or false, got {warm!r}")
    idle = node_config.get(IDLE, DEFAULT_IDLE_S)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not idle > 0:
        raise ValueError(f"node config {IDLE} must be a number of seconds > 0, got {idle!r}")
    return warm, float(idle)


def private_directory() -> Path:
    """``<tmp>/fedmtl-warm-<uid>``, readable by this user only (refused if anyone else could get in)."""
    directory = Path(tempfile.gettempdir()) / f"fedmtl-warm-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{directory} must belong to this user and be closed to others (chmod 700)")
    return directory


class HostFiles:
    """A host's socket, key, log and lock files: ``stem`` with four suffixes."""

    def __init__(self, stem: Path) -> None:
        self.socket, self.key, self.log, self.lock = (stem.with_suffix(s) for s in (".sock", ".key", ".log", ".lock"))

    @classmethod
    def of_owner(cls, owner: int) -> HostFiles:
        """The files of ``owner``'s host for this app and Python: a socket path must stay short (108 bytes on
        Linux), so they sit in :func:`private_directory` under a digest of the three."""
        digest = hashlib.sha256(f"{owner}\0{APP_DIR}\0{sys.executable}".encode()).hexdigest()[:20]
        return cls(private_directory() / digest)

    def all(self) -> tuple[Path, ...]:
        return self.socket, self.key, self.log, self.lock

    def dial(self) -> Connection:
        """A connection to the host listening on the socket (OSError when none does)."""
        return Client(str(self.socket), family="AF_UNIX", authkey=self.key.read_bytes())

    def new_key(self) -> None:
        self.key.unlink(missing_ok=True)
        descriptor = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as key:
            key.write(secrets.token_bytes(32))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl  # noqa: PLC0415 - POSIX only, as Unix sockets are: a cold ClientApp never needs it

        with open(self.lock, "a") as lock:  # one starter at a time; the others then find its host
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


class DeployedClientApp(ClientApp):
    """Flower calls it like any ClientApp; ``owner`` names the process whose end ends the host (by default
    the parent, which for ``flwr-clientapp`` is the SuperNode's SuperExec)."""

    def __init__(self, owner: Callable[[], int] = os.getppid) -> None:
        super().__init__()
        self.owner = owner
        self.started: list[subprocess.Popen] = []  # hosts this process started (tests stop them)

    def __call__(self, message: Message, context: Context) -> Message:
        warm, idle_s = warm_settings(dict(context.node_config))
        if timeline.enabled():
            partition = int(context.node_config.get(PARTITION_ID_KEY, -1))
            timeline.mark("clientapp_entry", process_started=timeline.process_started_at(), partition=partition)
        if not warm:
            from clients.client_app import app  # noqa: PLC0415 - torch and fedmtl only when used here

            return app(message, context)
        owner = self.owner()
        files = HostFiles.of_owner(owner)
        with self.connect(files, owner, idle_s) as host:
            host.send((message, context))
            try:
                answer = host.recv()
            except EOFError:
                dead = f"the warm ClientApp host died while handling the message; its log: {files.log}"
                raise RuntimeError(dead) from None
        if not answer[0]:
            raise RuntimeError(answer[1])
        reply, context.state = answer[1], answer[2]  # Flower pushes this context back to the SuperNode
        return reply

    def connect(self, files: HostFiles, owner: int, idle_s: float) -> Connection:
        with files.locked():
            with contextlib.suppress(OSError):  # none yet, or one that died: start one
                return files.dial()
            host = self.start(files, owner, idle_s)
            deadline = time.monotonic() + START_TIMEOUT_S
            while host.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    return files.dial()
                time.sleep(0.05)
            host.kill()
            raise RuntimeError(f"the warm ClientApp host did not start (exit code {host.poll()}); its log: {files.log}")

    def start(self, files: HostFiles, owner: int, idle_s: float) -> subprocess.Popen:
        files.socket.unlink(missing_ok=True)
        files.new_key()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the app as loaded here
        argv = [sys.executable, "-m", HOST_MODULE, str(files.socket), str(owner), str(idle_s)]
        with open(files.log, "ab") as log:
            host = subprocess.Popen(
                argv, cwd=APP_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # not in the ClientApp's process group: it outlives this process
            )  # fmt: skip
        self.started.append(host)
        return host

    def stop_hosts(self) -> None:
        for host in self.started:
            host.terminate()
            host.wait(timeout=30)
        self.started.clear()


app = DeployedClientApp()
"""The ClientApp of ``flwr run`` and SuperNodes; simulate.py builds ``clients.client_app``'s itself."""
