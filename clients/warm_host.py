"""A SuperNode's warm ClientApp host: one long-lived process that runs fedmtl's ClientApp on the
(message, context) pairs ``clients.deployed_app`` hands it, one at a time, so that torch and fedmtl are
imported once per node instead of once per message (``clients/deployed_app.py`` says why and how to turn it
on). It exits when its owner (the SuperNode's SuperExec) is gone, on SIGTERM or after its idle time, and
removes its socket, key, log and lock on the way out.

    python -m clients.warm_host SOCKET OWNER_PID IDLE_S     (started by clients.deployed_app)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path

from clients.client_app import app
from clients.deployed_app import HostFiles

log = logging.getLogger(__name__)
WATCH_EVERY_S = 0.5


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process under that pid: still there
        return True
    return True


def answer(connection: Connection) -> None:
    """One message: ``(True, reply, context state)``, or ``(False, reason)`` when the ClientApp raised."""
    message, context = connection.recv()
    try:
        reply = app(message, context)
    except Exception as err:  # noqa: BLE001 - the forwarding process raises it there, as Flower's would here
        log.warning("the ClientApp raised", exc_info=True)
        connection.send((False, f"{type(err).__name__}: {err}"))
        return
    connection.send((True, reply, context.state))


def serve(files: HostFiles, owner: int, idle_s: float) -> None:
    """Answer messages until the owner is gone or ``idle_s`` pass without one; then remove the host's files.
    A host that crashed leaves them: its log says why."""
    listener = Listener(str(files.socket), family="AF_UNIX", authkey=files.key.read_bytes())
    handling = threading.Lock()  # a message is never cut off: the exit waits for it
    last_message = [time.monotonic()]

    def watch() -> None:  # the accept below blocks: this thread ends the process
        while True:
            time.sleep(WATCH_EVERY_S)
            with handling:
                if not alive(owner) or time.monotonic() - last_message[0] >= idle_s:
                    stop()

    def stop(*_: object) -> None:  # also on SIGTERM (a SuperNode's shutdown, a test's clean-up)
        for path in files.all():
            path.unlink(missing_ok=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=watch, daemon=True).start()
    while True:
        try:
            connection = listener.accept()
        except (AuthenticationError, EOFError, OSError) as err:  # a stranger, or a client that gave up
            log.warning("refused a connection: %s", err)
            continue
        with handling, connection:
            try:
                answer(connection)
            except (EOFError, OSError) as err:  # the forwarding process went away mid-message
                log.warning("lost a connection: %s", err)
            last_message[0] = time.monotonic()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    socket_path, owner_pid, idle = sys.argv[1:4]
    serve(HostFiles(Path(socket_path).with_suffix("")), int(owner_pid), float(idle))
