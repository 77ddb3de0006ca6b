"""Database access: engines and sessions (SQLite WAL or PostgreSQL), locks, migrations on start."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.errors import ConfigError, SchemaVersionError
from edgefleet.server._leader import LeaderLease

__all__ = ["Database", "MIGRATIONS_DIR", "schema_head"]

T = TypeVar("T")

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Database:
    """Engines and sessions for one database URL.

    SQLite runs in WAL mode; write sessions start with ``BEGIN IMMEDIATE`` so that two writers
    serialize on the file lock instead of failing halfway through a transaction. PostgreSQL gets a
    connection pool with pre-ping, so a restarted server is survived by the next request.

    Args:
        url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
        pool_size: PostgreSQL connections per process.
        connect_timeout_s: PostgreSQL connect timeout.
        busy_timeout_ms: how long SQLite waits for the write lock.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout_s: float = 5.0,
        busy_timeout_ms: int = 10_000,
    ) -> None:
        try:
            self.url = make_url(url)
        except ArgumentError as e:
            raise ConfigError(
                f"database URL {url!r} is not valid: {e}",
                hint="use sqlite:///path/to/file.sqlite or postgresql+psycopg://user@host:5432/db",
            ) from e
        backend = self.url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"database backend {backend!r} is not supported",
                hint="use sqlite:///path or postgresql+psycopg://user@host/db",
            )
        self.dialect = backend
        self._lock_prefix = ""
        if backend == "sqlite":
            db = self.url.database
            if not db or db == ":memory:":
                raise ConfigError(
                    "an in-memory SQLite database cannot be shared between requests",
                    hint="give a file path: sqlite:///path/to/edgefleet.sqlite",
                )
            Path(db).parent.mkdir(parents=True, exist_ok=True)
            args = {"timeout": busy_timeout_ms / 1000.0, "check_same_thread": False}
            self.engine = create_engine(self.url, connect_args=args, pool_size=pool_size, max_overflow=20)
            self.read_engine = create_engine(
                self.url, connect_args=args, pool_size=pool_size, max_overflow=20
            )
            _sqlite_setup(self.engine, busy_timeout_ms, begin="BEGIN IMMEDIATE")
            _sqlite_setup(self.read_engine, busy_timeout_ms, begin="BEGIN")
            self.hot_engine = self.engine
        else:
            if self.url.drivername == "postgresql":
                self.url = self.url.set(drivername="postgresql+psycopg")
            self.engine = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_recycle=1800,
                connect_args={"connect_timeout": max(1, int(connect_timeout_s))},
            )
            self.read_engine = self.engine
            # The heartbeat path: no pre-ping round trip on every checkout (a dead connection is
            # handled in hot()), and no wait for the WAL flush: a heartbeat is soft state that the
            # device sends again, so losing the last fraction of a second of them in a database
            # crash costs nothing. Rollout decisions go through the main engine, fully durable.
            self.hot_engine = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=False,
                pool_recycle=1800,
                connect_args={
                    "connect_timeout": max(1, int(connect_timeout_s)),
                    "options": _merge_options(self.url, "-c synchronous_commit=off"),
                },
            )
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)
        self._prefix_lock = threading.Lock()
        self.leader = LeaderLease(self)  # which server process runs the periodic jobs

    # --- sessions ------------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one write transaction, committed on success and rolled back on error."""
        with self._write() as s, s.begin():
            yield s

    def hot(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(cursor)`` on a raw driver connection in autocommit mode: each statement commits.

        For the heartbeat, whose statements are each atomic on their own: SQLAlchemy's execution
        layer costs several times what the statement costs, and an explicit transaction would add
        two round trips (BEGIN, COMMIT) to PostgreSQL. A dropped connection (database restarted) is
        discarded with the rest of the small pool and the call retried once on a new one; errors
        come out as SQLAlchemy's ``DBAPIError``, as on the normal path.
        """
        dbapi = self.hot_engine.dialect.loaded_dbapi
        pg = self.dialect == "postgresql"
        for attempt in (0, 1):
            fairy = self.hot_engine.raw_connection()
            raw = fairy.dbapi_connection
            cur = None
            gone = False
            try:
                if pg:
                    raw.autocommit = True
                cur = fairy.cursor()
                return fn(cur)
            except dbapi.Error as e:
                gone = self.hot_engine.dialect.is_disconnect(e, raw, cur)
                if gone:
                    fairy.invalidate(e)
                    self.hot_engine.dispose(close=False)  # the others are as dead as this one
                    if attempt == 0:
                        continue
                raise DBAPIError.instance(None, None, e, dbapi.Error, connection_invalidated=gone) from e
            finally:
                if cur is not None:
                    with suppress(Exception):
                        cur.close()
                if pg and not gone:
                    with suppress(Exception):
                        raw.autocommit = False
                fairy.close()
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads (on SQLite it does not take the write lock)."""
        with self._read() as s, s.begin():
            yield s

    def ping(self) -> None:
        """Run ``SELECT 1`` (raises the driver's error when the database cannot be reached)."""
        with self.read() as s:
            s.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.leader.release()
        for e in {id(x): x for x in (self.engine, self.read_engine, self.hot_engine)}.values():
            e.dispose()

    # --- locks ---------------------------------------------------------------------------------

    def _lock_key(self, conn: Connection, name: str) -> int:
        with self._prefix_lock:
            if not self._lock_prefix:
                schema = conn.execute(text("SELECT current_schema()")).scalar() or "public"
                self._lock_prefix = f"{self.url.database}:{schema}"
        digest = hashlib.sha256(f"{self._lock_prefix}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def try_lock(self, session: Session, name: str) -> bool:
        """Take the named lock for the rest of the session's transaction, or return False at once.

        PostgreSQL: a transaction-scoped advisory lock, so several server processes on one database
        do a piece of work (advance a wave, re-sign the timestamp) exactly once. SQLite: write
        transactions already hold the database's write lock (``BEGIN IMMEDIATE``).
        """
        if self.dialect != "postgresql":
            return True
        conn = session.connection()
        key = self._lock_key(conn, name)
        return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar())

    def lock(self, session: Session, name: str) -> None:
        """Wait for the named lock (held until the transaction ends)."""
        if self.dialect != "postgresql":
            return
        conn = session.connection()
        key = self._lock_key(conn, name)
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    # --- migrations ----------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self) -> str:
        """Bring the schema to the newest revision this edgefleet knows; refuse a newer database.

        Returns:
            The revision the database is at afterwards.

        Raises:
            SchemaVersionError: the database was migrated by a newer edgefleet.
        """
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        cfg = _alembic_config()
        script = _script(cfg)
        head = script.get_current_head()
        with self._write() as s, s.begin():
            # One process migrates at a time; the others wait here and then find nothing to do.
            self.lock(s, "migrate")
            conn = s.connection()
            current = MigrationContext.configure(conn).get_current_revision()
            if current is not None and current not in {r.revision for r in script.walk_revisions()}:
                raise SchemaVersionError(
                    f"the database is at schema revision {current!r}, which this edgefleet does not "
                    f"know (newest known: {head!r}); it was written by a newer edgefleet",
                    hint="upgrade edgefleet on this machine, or point --db at another database",
                    revision=current,
                    head=head,
                )
            if current != head:
                log.info("migrating database from %s to %s", current, head)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        return head or ""


def schema_head() -> str:
    """The newest schema revision this edgefleet knows."""
    return _script(_alembic_config()).get_current_head() or ""


def _alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _script(cfg):
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(cfg)


def _sqlite_setup(engine: Engine, busy_timeout_ms: int, *, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Autocommit at the driver level: SQLAlchemy's "begin" event below issues our own BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql(begin)


def _merge_options(url: Any, extra: str) -> str:
    """libpq ``options`` of the URL (e.g. a search_path) plus ``extra``."""
    given = url.query.get("options")
    given = given[-1] if isinstance(given, tuple) else given
    return f"{given} {extra}" if given else extra


def is_db_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database is down or unreachable (not a bad statement)."""
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
