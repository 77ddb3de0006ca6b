"""Heartbeats coalesced on PostgreSQL: those that arrive while a write is in flight go in the next one.

One writer thread per server process owns the writes. Heartbeats queue while it waits for the database;
it then sends all of them (up to ``max_batch``) in one pipelined round trip (psycopg's ``executemany``
with ``returning``), so the database sees one network exchange and one commit per batch instead of one
per device, and the event loop awaits a future instead of handing each request to a thread. The window
is therefore not a timer: a lone heartbeat is written at once, and under load the window is the
previous batch's round trip.

Semantics are the single statement's: every heartbeat is still its own ``UPDATE ... RETURNING`` of its
own row, so each device's answer is its own state after its own report. A batch whose pipeline fails
(one bad row aborts the rest) is retried one statement at a time, so one device's failure is never
another's; a batch the database rolled back as a deadlock victim (it locks its rows in arrival order, a
rollout tick in its own) is written again whole. A device is answered only after its write returned, so a server crash loses only unanswered
heartbeats (the devices send them again); a database crash loses at most the last fraction of a second
of commits (``synchronous_commit=off`` on this connection, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from edgefleet.server._db import Database, is_db_unavailable
from edgefleet.server._heartbeat import HeartbeatWriter, PreparedBeat

__all__ = ["HeartbeatBatcher"]

log = logging.getLogger(__name__)

DEADLOCK_RETRIES = 3  # times a batch the database rolled back (deadlock victim) is written again

_Item = tuple[PreparedBeat, asyncio.AbstractEventLoop, asyncio.Future]


class HeartbeatBatcher:
    """Writes heartbeats in batches on one thread; ``await record(beat)`` gives ``(row, command_done)``."""

    def __init__(self, writer: HeartbeatWriter, *, max_batch: int = 256) -> None:
        if writer.db.dialect != "postgresql":
            raise ValueError("heartbeat batching needs PostgreSQL (SQLite writes on the event loop)")
        self.writer = writer
        self.db: Database = writer.db
        self.max_batch = max_batch
        self.batches = 0  # batches written (for tests and the benchmark's report)
        self.largest = 0
        self.retried = 0  # batches written again after the database rolled them back (deadlock)
        self._pending: list[_Item] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def record(self, beat: PreparedBeat) -> tuple[Any, bool]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the heartbeat writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edgefleet-heartbeats", daemon=True)
                self._thread.start()
            self._pending.append((beat, loop, fut))
            self._cv.notify()
        return await fut

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # --- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            _settle(batch, self._outcomes(batch))

    def _outcomes(self, batch: list[_Item]) -> list[tuple[Any, BaseException | None]]:
        beats = [b for b, _, _ in batch]
        for attempt in range(1 + DEADLOCK_RETRIES):
            try:
                return [(r, None) for r in self.db.hot(lambda cur: self._write(cur, beats))]
            except Exception as e:
                if _rolled_back_by_the_database(e) and attempt < DEADLOCK_RETRIES:
                    # a batch is one implicit transaction, locking its devices' rows in arrival order;
                    # a rollout tick updating some of them in another order can deadlock with it, and
                    # PostgreSQL then aborts one side: written again, nothing of it was kept
                    self.retried += 1
                    log.info("a batch of %d heartbeats was rolled back (%s); writing it again", len(beats), e)
                    continue
                if len(beats) == 1 or is_db_unavailable(e):
                    return [(None, e)] * len(beats)
                log.warning("a batch of %d heartbeats failed (%s); writing them one by one", len(beats), e)
                break
        out: list[tuple[Any, BaseException | None]] = []
        for b in beats:
            try:
                out.append((self.db.hot(lambda cur, b=b: self._write(cur, [b]))[0], None))
            except Exception as e:  # this device's own failure, answered to it alone
                out.append((None, e))
        return out

    def _write(self, cur: Any, beats: list[PreparedBeat]) -> list[tuple[Any, bool]]:
        """Every beat's statement in one pipeline (grouped by statement, answers in the beats' order)."""
        rows: dict[int, Any] = {}
        for by_token in (True, False):
            idx = [i for i, b in enumerate(beats) if b.by_token is by_token]
            if not idx:
                continue
            cur.executemany(self.writer.sql[by_token], [beats[i].params for i in idx], returning=True)
            for i in idx:
                found = cur.fetchall()
                rows[i] = found[0] if found else None
                cur.nextset()
        return [(rows[i], self.writer.finish(cur, b, rows[i])) for i, b in enumerate(beats)]


def _rolled_back_by_the_database(e: BaseException) -> bool:
    """A deadlock victim or a serialization failure: the transaction was undone and may simply run again."""
    return getattr(getattr(e, "orig", None), "sqlstate", None) in ("40P01", "40001")


def _settle(batch: list[_Item], outcomes: list[tuple[Any, BaseException | None]]) -> None:
    """Hand each result to its request's event loop (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any, BaseException | None]]] = {}
    for (_, loop, fut), (res, err) in zip(batch, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((fut, res, err))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits for these answers
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(items: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for fut, res, err in items:
        if fut.cancelled():
            continue
        if err is not None:
            fut.set_exception(err)
        else:
            fut.set_result(res)
