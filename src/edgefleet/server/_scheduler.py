"""One background thread per set of periodic jobs (the rollout engine's ticks, alert evaluation, retention).

A job that fails is logged and tried again at its next turn; a database outage is logged at most once
per 10 seconds per job, so it is visible without flooding the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.server._db import is_db_unavailable
from edgefleet.server._leader import LeaderLease

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

_WARN_EVERY_S = 10.0
_LEADER_RETRY_S = 2.0  # how often a process that does not lead tries to take over


@dataclass
class _Job:
    name: str
    interval_s: float
    fn: Callable[[], object]
    due: float
    warned: float = -1e9


class Scheduler:
    """Runs each job every ``interval_s`` seconds (measured from the end of its previous run) in one thread.

    With ``leader`` (a database's ``LeaderLease``) the jobs run only while this process holds it, so of
    several server processes on one database one runs them; the others try to take over every 2 s.

    Example:
        s = Scheduler("edgefleet-engine", leader=db.leader)
        s.every(1.0, "rollout engine tick", engine.tick)
        s.start(); ...; s.close()
    """

    def __init__(self, name: str, *, leader: LeaderLease | None = None) -> None:
        self.name = name
        self.leader = leader
        self._jobs: list[_Job] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(
        self, interval_s: float, name: str, fn: Callable[[], object], *, first_after_s: float = 0.0
    ) -> None:
        """Add a job; its first run comes ``first_after_s`` seconds after this call."""
        self._jobs.append(_Job(name, interval_s, fn, time.monotonic() + first_after_s))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set() and self._jobs:
            if self.leader is not None and not self.leader.held():
                self._stop.wait(_LEADER_RETRY_S)
                continue
            for job in self._jobs:
                if self._stop.is_set():
                    return
                if time.monotonic() >= job.due:
                    self._guard(job)
                    job.due = time.monotonic() + job.interval_s
            self._stop.wait(max(0.0, min(j.due for j in self._jobs) - time.monotonic()))

    @staticmethod
    def _guard(job: _Job) -> None:
        try:
            job.fn()
        except Exception as e:
            if is_db_unavailable(e):
                now = time.monotonic()
                if now - job.warned >= _WARN_EVERY_S:
                    job.warned = now
                    log.warning("%s: database unavailable (%s); retrying later", job.name, type(e).__name__)
            else:
                log.exception("%s failed; retrying at its next turn", job.name)
