"""Which server process runs the periodic jobs: the one that holds the database's leader lease.

Several server processes may serve one database (``edgefleet server run --workers N``, or several hosts).
Each job's work is already made exactly-once by transaction-scoped locks (``Database.try_lock``), but every
process would still wake up, query and contend for them. With the lease, one process runs the jobs and
the others only serve requests; when the leader exits or loses its database connection, the lock goes
with its session and another process takes over at its next try.

PostgreSQL: a session-level advisory lock held on a connection of its own (``pg_try_advisory_lock``).
SQLite: an exclusive ``flock`` on a file beside the database (released by the kernel when the process
ends).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    from edgefleet.server._db import Database

__all__ = ["LeaderLease"]

log = logging.getLogger(__name__)


class LeaderLease:
    """``held()``: does this process lead (taking the lease when it is free)? ``release()`` gives it up."""

    def __init__(self, db: Database, name: str = "scheduler") -> None:
        self.db = db
        self.name = name
        self._lock = threading.Lock()
        self._conn: Any = None  # PostgreSQL: the connection whose session holds the lock
        self._fd: int | None = None  # SQLite: the locked file

    def held(self) -> bool:
        with self._lock:
            try:
                return self._check() if self.leading else self._take()
            except Exception as e:  # the database is unreachable: not the leader until it is back
                log.debug("leader lease %s: %s", self.name, e)
                self._drop()
                return False

    def release(self) -> None:
        with self._lock:
            self._drop()

    @property
    def leading(self) -> bool:
        """Held at the last look (no database access)."""
        return self._conn is not None or self._fd is not None

    def _take(self) -> bool:
        if self.db.dialect == "postgresql":
            conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            key = self.db._lock_key(conn, f"leader:{self.name}")
            if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                self._conn = conn
                log.info("this process leads (runs the periodic jobs)")
                return True
            conn.close()
            return False
        fd = os.open(f"{self.db.url.database}.{self.name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _check(self) -> bool:
        """Still the leader? (PostgreSQL: the lock's session is alive.)"""
        if self._conn is not None:
            self._conn.execute(text("SELECT 1"))
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.invalidate()  # closes the session itself (not back to the pool): the lock goes
            with suppress(Exception):
                self._conn.close()
            self._conn = None
        if self._fd is not None:
            with suppress(OSError):
                os.close(self._fd)
            self._fd = None
