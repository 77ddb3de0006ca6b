"""Worker processes under one supervisor: the control plane's (``edgefleet server run``) and the local
runtime API's (``edgefleet serve --workers N``).

The supervisor starts the processes, waits for SIGTERM/SIGINT or for one of them to die, then stops
them all: a process that died takes the others down, and the supervisor's own supervisor (systemd,
Kubernetes, a shell) restarts the whole server. Each worker stops by itself when its supervisor is
killed without stopping it (:func:`stop_when_orphaned`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

__all__ = ["stop_when_orphaned", "supervise"]

log = logging.getLogger(__name__)


def supervise(procs: list[Any], *, what: str = "server") -> int:
    """Start ``procs`` (multiprocessing processes), run until a signal or a death; the exit code."""
    import signal

    for p in procs:
        p.start()
    stopping = threading.Event()

    def stop(*_: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.is_set() and all(p.is_alive() for p in procs):
        stopping.wait(0.5)
    code = 0 if stopping.is_set() else 1
    if code:
        log.error("a %s process exited (code %s); stopping the others", what, [p.exitcode for p in procs])
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(15)
        if p.is_alive():
            p.kill()
    return code


def stop_when_orphaned(parent: int) -> None:
    """SIGTERM this process when the supervisor ``parent`` was killed without stopping it."""
    import signal

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, name="edgefleet-orphan-watch", daemon=True).start()
