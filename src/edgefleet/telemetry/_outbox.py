"""Durable store-and-forward queue for everything a device sends (telemetry, events, samples, escalations).

Design decisions (see docs/benchmarks/telemetry.md for the measured behaviour):

* **Durability**: SQLite in WAL mode with ``synchronous=FULL``; every :meth:`Outbox.put` is one committed
  transaction before it returns, so an acknowledged put survives kill -9 and power loss.
* **Priorities** (higher number = more important, evicted last): ``event`` 30 > ``telemetry`` 20 >
  ``escalation`` 15 > ``sample`` 10. Events (rollbacks, failures) are tiny and irreplaceable; telemetry
  windows are small and leave gaps when lost; an escalation is one specific low-confidence request a caller
  asked to have reviewed; samples are statistical and replaceable, and the largest.
* **Byte cap**: when a put would exceed ``max_bytes``, the oldest items of the lowest priority are evicted
  first, never an item of higher priority than the new one; if that is not enough, the new item is
  rejected. Both are counted per kind (``evicted`` / ``rejected``), with bytes.
* **TTL and clocks**: ages are measured on an *outbox clock* that advances with ``time.monotonic()`` while a
  process runs (so a wall-clock jump of a day by NTP does not purge anything), and across restarts by the
  wall-clock gap, clamped to ``[0, max_offline_credit_s]`` (so a clock set back never makes items younger,
  and a bogus jump at boot ages items by at most one day by default).
* **Disk full**: SQLITE_FULL evicts the lowest-priority oldest items and retries once, and lowers the
  effective cap to what the disk holds; if space still cannot be found the put raises
  :class:`~edgefleet.errors.DiskSpaceError` and the item is counted as ``disk_full``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.errors import DiskSpaceError, PayloadTooLargeError, TelemetryError, ValidationError
from edgefleet.telemetry import _upload
from edgefleet.telemetry._upload import DrainReport, OutboxItem, TokenBucket, UploadBatch, encode_upload

__all__ = ["DEFAULT_PRIORITIES", "ITEM_OVERHEAD_BYTES", "Outbox", "OutboxConfig"]

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_MIB = 1 << 20
_DAY = 86_400.0
#: Bytes charged per item on top of its payload, so that many tiny items cannot grow the file unbounded.
ITEM_OVERHEAD_BYTES = 64

DEFAULT_PRIORITIES: dict[str, int] = {"event": 30, "telemetry": 20, "escalation": 15, "sample": 10}

_KIND_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")


class OutboxConfig(BaseSettings):
    """Limits of the outbox (``EDGEFLEET_OUTBOX_*`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_OUTBOX_", extra="ignore")

    max_bytes: int = Field(
        64 * _MIB, ge=1024, description="byte cap over all queued items (payload + 64 B each)"
    )
    max_item_bytes: int = Field(1 * _MIB, ge=64, description="largest single payload accepted by put()")
    ttl_s: float = Field(
        3 * _DAY, gt=0, description="age after which an item is dropped (counted as expired)"
    )
    ttl_by_kind: dict[str, float] = Field(default_factory=dict, description="per-kind TTL overrides, seconds")
    priorities: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    default_priority: int = Field(10, description="priority of kinds not listed in ``priorities``")
    max_offline_credit_s: float = Field(
        _DAY,
        ge=0,
        description="most wall-clock time credited to item ages across a restart (clock-jump guard)",
    )
    upload_interval_s: float = Field(
        900.0,
        gt=0,
        description="how often the agent drains the outbox; 900 s keeps 60 s windows under 20 KB per hour "
        "(heartbeats carry per-minute health in between)",
    )
    upload_max_bytes: int = Field(256 * 1024, ge=1024, description="raw payload bytes per upload batch")
    compression_level: int = Field(3, ge=1, le=22, description="zstd level of upload bodies")
    bandwidth_bytes_per_s: float | None = Field(
        None, gt=0, description="token-bucket rate of compressed upload bytes; None = unlimited"
    )
    bandwidth_burst_bytes: int = Field(256 * 1024, ge=1024, description="token-bucket burst (bucket size)")
    min_free_disk_bytes: int = Field(
        1 * _MIB,
        ge=0,
        description="free disk space kept in reserve: below it, puts evict instead of growing the file",
    )
    busy_timeout_ms: int = Field(10_000, ge=0, description="wait for another process holding the write lock")

    @field_validator("ttl_by_kind", "priorities")
    @classmethod
    def _kinds_ok(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in v:
            if not _KIND_RE.match(k):
                raise ValueError(f"bad kind name {k!r} (lowercase letters, digits, _.-; at most 32)")
        return v


def _is_disk_full(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(e).lower()


class Outbox:
    """Durable, capped, prioritized queue (see module docstring for the policies).

    Args:
        path: SQLite file (created with its parent directory).
        config: limits; defaults from the environment.
        monotonic, wall: clock functions (tests inject them to simulate jumps and outages).

    Thread-safe; several processes may share one file (SQLite locking, ``busy_timeout``).
    """

    def __init__(
        self,
        path: str | Path,
        config: OutboxConfig | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.config = config or OutboxConfig()
        self._mono, self._wall = monotonic, wall
        self._lock = threading.RLock()
        self._cap = self.config.max_bytes  # lowered after a disk-full
        self._mem_drops: dict[tuple[str, str], list[int]] = {}
        self._bucket = (
            TokenBucket(self.config.bandwidth_bytes_per_s, self.config.bandwidth_burst_bytes, clock=monotonic)
            if self.config.bandwidth_bytes_per_s
            else None
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                check_same_thread=False,
                timeout=self.config.busy_timeout_ms / 1000,
            )
            self._db.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # Small WAL: checkpoint every ~256 KiB so the file stays near the cap on small disks.
            self._db.execute("PRAGMA wal_autocheckpoint=64")
            self._db.execute("PRAGMA journal_size_limit=262144")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            if hasattr(self, "_db"):
                self._db.close()
            raise TelemetryError(
                f"outbox {self.path} cannot be opened: {e}",
                hint="move the file aside (it is kept, not deleted) and restart to begin a new outbox",
                path=str(self.path),
            ) from e

    # --- schema and clock ---------------------------------------------------------------------------

    def _init_schema(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL UNIQUE,"
                " kind TEXT NOT NULL, priority INTEGER NOT NULL, created_clock REAL NOT NULL,"
                " created_wall REAL NOT NULL, encoding TEXT NOT NULL, size INTEGER NOT NULL, payload BLOB NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS items_evict ON items(priority, id, kind, size)")
            db.execute("CREATE INDEX IF NOT EXISTS items_age ON items(created_clock)")
            db.execute("CREATE INDEX IF NOT EXISTS items_kind ON items(kind, size)")
            # upload order (most important first, then oldest), covering: no payload is read to plan a batch
            db.execute("CREATE INDEX IF NOT EXISTS items_upload ON items(priority DESC, id ASC, kind, size)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS counters (kind TEXT NOT NULL, reason TEXT NOT NULL,"
                " items INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (kind, reason))"
            )
            version = self._meta("schema_version")
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (_SCHEMA_VERSION,))
                db.execute("INSERT INTO meta VALUES ('total_bytes', 0)")
                db.execute("INSERT INTO meta VALUES ('clock_s', 0.0)")
                db.execute("INSERT INTO meta VALUES ('wall_s', ?)", (self._wall(),))
            elif int(version) > _SCHEMA_VERSION:
                from edgefleet.errors import SchemaVersionError

                raise SchemaVersionError(
                    f"outbox {self.path} has schema {version}, this edgefleet knows {_SCHEMA_VERSION}",
                    hint="upgrade edgefleet on this device",
                )
            clock = float(self._meta("clock_s") or 0.0)
            gap = self._wall() - float(self._meta("wall_s") or self._wall())
            credit = min(max(gap, 0.0), self.config.max_offline_credit_s)
            if gap > self.config.max_offline_credit_s or gap < 0:
                log.warning(
                    "outbox wall-clock gap of %.0f s since last run; crediting %.0f s to item ages",
                    gap,
                    credit,
                    extra={"path": str(self.path), "gap_s": gap},
                )
            self._clock_base, self._mono_base = clock + credit, self._mono()
            self._save_clock()
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (e.g. on SQLITE_FULL).
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def clock(self) -> float:
        """Outbox clock, seconds: monotonic within a run, wall-clock gap (clamped) across runs."""
        return self._clock_base + (self._mono() - self._mono_base)

    def _save_clock(self) -> None:
        self._db.execute(
            "UPDATE meta SET value=max(CAST(value AS REAL), ?) WHERE key='clock_s'", (self.clock(),)
        )
        self._db.execute("UPDATE meta SET value=? WHERE key='wall_s'", (self._wall(),))

    # --- helpers (inside a transaction) -------------------------------------------------------------

    def _count(self, kind: str, reason: str, n: int, nbytes: int) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?,?,?,?) ON CONFLICT(kind, reason) DO UPDATE SET"
            " items=items+excluded.items, bytes=bytes+excluded.bytes",
            (kind, reason, n, nbytes),
        )

    def _delete(self, rows: list[tuple[int, str, int]], reason: str) -> int:
        """Delete (id, kind, size) rows, count them under ``reason``; return bytes freed."""
        if not rows:
            return 0
        per: dict[str, list[int]] = {}
        for _, kind, size in rows:
            c = per.setdefault(kind, [0, 0])
            c[0] += 1
            c[1] += size
        self._db.executemany("DELETE FROM items WHERE id=?", [(r[0],) for r in rows])
        freed = sum(r[2] for r in rows)
        self._db.execute("UPDATE meta SET value=value-? WHERE key='total_bytes'", (freed,))
        for kind, (n, b) in per.items():
            self._count(kind, reason, n, b)
        return freed

    def _ttl(self, kind: str) -> float:
        return self.config.ttl_by_kind.get(kind, self.config.ttl_s)

    def _purge_expired(self) -> int:
        now = self.clock()
        shortest = min([self.config.ttl_s, *self.config.ttl_by_kind.values()])
        # candidates through the age index, then each kind's own TTL
        rows = [
            (id_, kind, size)
            for id_, kind, size, created in self._db.execute(
                "SELECT id, kind, size, created_clock FROM items WHERE created_clock < ?", (now - shortest,)
            )
            if created < now - self._ttl(kind)
        ]
        if rows:
            log.info("outbox dropped %d expired items", len(rows), extra={"path": str(self.path)})
        return self._delete(rows, "expired")

    def _total(self) -> int:
        return int(self._meta("total_bytes") or 0)

    def _victims(self, priority: int, need: int) -> list[tuple[int, str, int]] | None:
        """Oldest lowest-priority items (never above ``priority``) freeing ``need`` bytes, or None."""
        out, freed = [], 0
        cur = self._db.execute(
            "SELECT id, kind, size FROM items WHERE priority <= ? ORDER BY priority ASC, id ASC", (priority,)
        )
        for row in cur:
            out.append(row)
            freed += row[2]
            if freed >= need:
                return out
        return None

    # --- public API ---------------------------------------------------------------------------------

    def priority_of(self, kind: str) -> int:
        return self.config.priorities.get(kind, self.config.default_priority)

    def put(self, kind: str, payload: bytes | dict[str, Any], priority: int | None = None) -> int | None:
        """Queue one item durably; return its id, or None if the cap is full of more important items.

        Args:
            kind: ``event``, ``telemetry``, ``escalation``, ``sample`` or another short lowercase name.
            payload: raw bytes, or a JSON-able dict.
            priority: overrides the kind's priority (higher = kept longer).

        Raises:
            ValidationError: bad kind or a payload that is not bytes / JSON-able dict.
            PayloadTooLargeError: payload above ``max_item_bytes``.
            DiskSpaceError: the disk is full even after evicting lower-priority items.
        """
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise ValidationError(
                f"outbox kind {kind!r} is invalid",
                hint="use a short lowercase name such as 'telemetry' or 'event'",
            )
        if isinstance(payload, (bytes, bytearray, memoryview)):
            blob, encoding = bytes(payload), "bytes"
        elif isinstance(payload, dict):
            try:
                blob = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as e:
                raise ValidationError(
                    f"outbox payload of kind {kind!r} is not JSON-serializable: {e}",
                    hint="convert numpy values to Python numbers and NaN to None, or pass bytes",
                ) from e
            encoding = "json"
        else:
            raise ValidationError(f"outbox payload must be bytes or dict, not {type(payload).__name__}")
        if len(blob) > self.config.max_item_bytes:
            raise PayloadTooLargeError(
                f"outbox item of kind {kind!r} is {len(blob)} bytes, limit {self.config.max_item_bytes}",
                hint="raise EDGEFLEET_OUTBOX_MAX_ITEM_BYTES or send smaller payloads",
            )
        prio = self.priority_of(kind) if priority is None else int(priority)
        size = len(blob) + ITEM_OVERHEAD_BYTES
        with self._lock:
            try:
                return self._put_txn(kind, prio, blob, encoding, size)
            except sqlite3.OperationalError as e:
                if not _is_disk_full(e):
                    raise
                log.warning("outbox disk full; evicting and retrying", extra={"path": str(self.path)})
            # Disk full: lower the cap to what fits now, evict to make room, then retry once.
            try:
                self._cap = max(1024, min(self._cap, int(self._total() * 0.9)))
                self._checkpoint()
                self._make_room(prio, size + max(self._total() // 10, size))
                self._checkpoint()
                return self._put_txn(kind, prio, blob, encoding, size)
            except sqlite3.OperationalError as e:
                if not _is_disk_full(e):
                    raise
                c = self._mem_drops.setdefault((kind, "disk_full"), [0, 0])
                c[0] += 1
                c[1] += size
                raise DiskSpaceError(
                    f"disk under outbox {self.path} is full; item of kind {kind!r} was not stored",
                    hint="free disk space or lower EDGEFLEET_OUTBOX_MAX_BYTES",
                    path=str(self.path),
                ) from e

    def _checkpoint(self) -> None:
        # Give the WAL's disk space back so the freed pages of the main file can be reused.
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as e:
            log.warning("outbox checkpoint failed: %s", e, extra={"path": str(self.path)})

    def _make_room(self, priority: int, need: int) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = (
                self._victims(priority, need)
                or db.execute(
                    "SELECT id, kind, size FROM items WHERE priority <= ? ORDER BY priority, id", (priority,)
                ).fetchall()
            )
            self._delete(rows, "evicted")
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _low_disk(self, size: int) -> bool:
        """True when the disk's free space would drop under the reserve; restores the cap when it recovers."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return False
        if free < self.config.min_free_disk_bytes + 2 * size:
            return True
        if self._cap < self.config.max_bytes and free > 4 * self.config.min_free_disk_bytes + 2 * size:
            self._cap = self.config.max_bytes
        return False

    def _put_txn(self, kind: str, prio: int, blob: bytes, encoding: str, size: int) -> int | None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._purge_expired()
            total = self._total()
            low_disk = self._low_disk(size)
            if low_disk:
                # Stop growing the file: new items must reuse the pages of evicted ones.
                self._cap = max(1024, min(self._cap, total))
            need = max(total + size - self._cap, size if low_disk else 0)
            if need > 0:
                victims = self._victims(prio, need)
                if victims is None:
                    self._count(kind, "disk_full" if low_disk else "rejected", 1, size)
                    self._save_clock()
                    db.execute("COMMIT")
                    log.info(
                        "outbox full: rejected %s item of %d bytes",
                        kind,
                        size,
                        extra={"path": str(self.path)},
                    )
                    return None
                self._delete(victims, "evicted")
            cur = db.execute(
                "INSERT INTO items (uid, kind, priority, created_clock, created_wall, encoding, size, payload)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (uuid.uuid4().hex, kind, prio, self.clock(), self._wall(), encoding, size, blob),
            )
            db.execute("UPDATE meta SET value=value+? WHERE key='total_bytes'", (size,))
            self._count(kind, "queued", 1, size)
            self._save_clock()
            db.execute("COMMIT")
            return int(cur.lastrowid)
        except BaseException:
            self._rollback()
            raise

    def _rows_to_items(self, rows: Iterable[tuple]) -> list[OutboxItem]:
        out = []
        for id_, uid, kind, prio, wall, enc, size, blob in rows:
            payload: bytes | dict[str, Any] = json.loads(blob) if enc == "json" else bytes(blob)
            out.append(OutboxItem(id_, uid, kind, prio, wall, size, payload))
        return out

    def _select(self, kinds: Iterable[str] | None, limit: int) -> sqlite3.Cursor:
        q = "SELECT id, uid, kind, priority, created_wall, encoding, size, payload FROM items INDEXED BY items_upload"
        args: list[Any] = []
        if kinds is not None:
            kinds = list(kinds)
            q += f" WHERE kind IN ({','.join('?' * len(kinds))})"
            args += kinds
        return self._db.execute(q + " ORDER BY priority DESC, id ASC LIMIT ?", [*args, int(limit)])

    def purge_expired(self) -> int:
        """Drop items older than their TTL now (puts and batches do this too); return bytes freed."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                freed = self._purge_expired()
                self._save_clock()
                self._db.execute("COMMIT")
                return freed
            except BaseException:
                self._rollback()
                raise

    def peek(self, limit: int = 100, kinds: Iterable[str] | None = None) -> list[OutboxItem]:
        """Up to ``limit`` items in upload order (highest priority first, then oldest); nothing is removed."""
        with self._lock:
            return self._rows_to_items(self._select(kinds, limit).fetchall())

    def batch(self, max_bytes: int | None = None, kinds: Iterable[str] | None = None) -> list[OutboxItem]:
        """Items in upload order up to ``max_bytes`` of payload (at least one item when any is queued)."""
        max_bytes = self.config.upload_max_bytes if max_bytes is None else max_bytes
        self.purge_expired()
        wanted = None if kinds is None else set(kinds)
        with self._lock:
            ids, total = [], 0
            # plan on the covering index, then read only the chosen payloads
            for id_, kind, size in self._db.execute(
                "SELECT id, kind, size FROM items INDEXED BY items_upload ORDER BY priority DESC, id ASC"
            ):
                if wanted is not None and kind not in wanted:
                    continue
                if ids and total + size > max_bytes:
                    break
                ids.append(id_)
                total += size
            if not ids:
                return []
            q = "SELECT id, uid, kind, priority, created_wall, encoding, size, payload FROM items WHERE id IN"
            rows = self._db.execute(f"{q} ({','.join('?' * len(ids))})", ids).fetchall()
            order = {id_: i for i, id_ in enumerate(ids)}
            rows.sort(key=lambda r: order[r[0]])
            return self._rows_to_items(rows)

    def ack(self, ids: Iterable[int]) -> int:
        """Remove delivered items; return how many were removed (unknown ids are ignored: acks are idempotent)."""
        ids = [int(i) for i in ids]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows: list[tuple[int, str, int]] = []
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    rows += self._db.execute(
                        f"SELECT id, kind, size FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk
                    ).fetchall()
                self._delete(rows, "sent")
                self._save_clock()
                self._db.execute("COMMIT")
                return len(rows)
            except BaseException:
                self._rollback()
                raise

    def next_upload(
        self, max_bytes: int | None = None, kinds: Iterable[str] | None = None, header: dict | None = None
    ) -> UploadBatch | None:
        """The next compressed upload body, or None when nothing is queued. Nothing is removed until ack."""
        items = self.batch(max_bytes, kinds)
        if not items:
            return None
        batch_id = hashlib.sha256("\n".join(i.uid for i in items).encode()).hexdigest()[:32]
        body, raw = encode_upload(
            items, batch_id=batch_id, level=self.config.compression_level, header=header
        )
        return UploadBatch(batch_id, [i.id for i in items], items, body, raw)

    def drain(
        self,
        send: Callable[[UploadBatch], Any],
        *,
        kinds: Iterable[str] | None = None,
        header: dict | None = None,
        max_batches: int | None = None,
    ) -> DrainReport:
        """Upload batches through ``send`` until empty, out of bandwidth budget, or ``send`` raises.

        ``send`` must return only once the server has durably accepted the body; its exception stops the
        drain and leaves the batch queued (the server deduplicates a retry by ``batch_id``).
        """
        return _upload.drain(self, send, kinds=kinds, header=header, max_batches=max_batches)

    def stats(self) -> dict[str, Any]:
        """Sizes, counts per kind, and counters (queued/sent/evicted/rejected/expired/disk_full) per kind."""
        with self._lock:
            now = self.clock()
            by_kind = {
                k: {"items": n, "bytes": b, "oldest_age_s": round(now - oldest, 3)}
                for k, n, b, oldest in self._db.execute(
                    "SELECT kind, COUNT(*), SUM(size), MIN(created_clock) FROM items GROUP BY kind"
                )
            }
            counters: dict[str, dict[str, dict[str, int]]] = {}
            for kind, reason, n, b in self._db.execute("SELECT kind, reason, items, bytes FROM counters"):
                counters.setdefault(kind, {})[reason] = {"items": n, "bytes": b}
            for (kind, reason), (n, b) in self._mem_drops.items():
                c = counters.setdefault(kind, {}).setdefault(reason, {"items": 0, "bytes": 0})
                c["items"] += n
                c["bytes"] += b
            dropped = {
                k: {r: v for r, v in c.items() if r in ("evicted", "rejected", "expired", "disk_full")}
                for k, c in counters.items()
            }
            file_bytes = sum(
                p.stat().st_size
                for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
                if p.exists()
            )
            return {
                "path": str(self.path),
                "items": sum(v["items"] for v in by_kind.values()),
                "bytes": self._total(),
                "max_bytes": self.config.max_bytes,
                "effective_max_bytes": self._cap,
                "file_bytes": file_bytes,
                "clock_s": round(now, 3),
                "by_kind": by_kind,
                "counters": counters,
                "dropped": {k: v for k, v in dropped.items() if v},
            }

    def bytes_of(self, kind: str) -> int:
        """Bytes (payload + overhead) of the queued items of one kind."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM items WHERE kind=?", (kind,)
            ).fetchone()
            return int(row[0])

    def check(self) -> list[str]:
        """Consistency problems found (empty when healthy): SQLite integrity and the byte total."""
        with self._lock:
            problems = [r[0] for r in self._db.execute("PRAGMA integrity_check") if r[0] != "ok"]
            actual = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM items").fetchone()[0]
            if actual != self._total():
                problems.append(f"total_bytes is {self._total()} but items sum to {actual}")
            return problems

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
