"""A lean keep-alive HTTP/1.1 client for the simulated fleet's hot path (heartbeats, telemetry uploads).

Why not httpx: with thousands of devices sharing one ``httpx.AsyncClient``, every request waiting for a
pooled connection makes httpcore rescan the whole queue (``_assign_requests_to_connections``), so the
client's cost grows with the square of the fleet: profiled at 1,000 devices on a 2 s heartbeat, 134 of
210 CPU seconds went there and the fleet delivered ~17 heartbeats/s. This pool hands idle connections
out from a list (O(1)), writes one request and reads one fixed-length response; it speaks only what the
control plane answers (``Content-Length`` bodies, or ``Connection: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
import time
from urllib.parse import urlparse

__all__ = ["HttpPool", "PoolError"]


class PoolError(OSError):
    """The request did not get an answer (connect failure, reset, timeout, malformed response)."""


class _Conn:
    __slots__ = ("reader", "writer", "used")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.used = reader, writer, time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone
            self.writer.close()


class HttpPool:
    """Up to ``max_connections`` keep-alive connections to one server (``http://`` or ``https://``).

    ``request`` waits for a free connection (FIFO), sends, and returns ``(status, body)``; it raises
    :class:`PoolError` on any transport failure. A connection idle longer than ``idle_s`` (the server's
    keep-alive timeout is 30 s) or closed by the server is replaced before use, so a long heartbeat
    interval does not turn into errors.
    """

    def __init__(
        self, url: str, *, max_connections: int = 64, timeout_s: float = 30.0, idle_s: float = 20.0
    ) -> None:
        u = urlparse(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl: _ssl.SSLContext | None = _ssl.create_default_context() if u.scheme == "https" else None
        self.hostport = f"{self.host}:{self.port}"
        self.timeout_s, self.idle_s = timeout_s, idle_s
        self._idle: list[_Conn] = []
        self._sem = asyncio.Semaphore(max_connections)
        self.opened = 0

    async def _connect(self) -> _Conn:
        r, w = await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=1 << 20)
        self.opened += 1
        return _Conn(r, w)

    def _take(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            c = self._idle.pop()
            if now - c.used < self.idle_s and not c.reader.at_eof() and not c.writer.is_closing():
                return c
            c.close()
        return None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.hostport}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        req = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with self._sem:
            conn = self._take()
            try:
                async with asyncio.timeout(self.timeout_s):
                    if conn is None:
                        conn = await self._connect()
                    status, data, keep = await self._exchange(conn, req)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, IndexError) as e:  # fmt: skip
                if conn is not None:
                    conn.close()
                raise PoolError(f"{method} {path}: {type(e).__name__}: {e}") from e
            if keep:
                conn.used = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()
            return status, data

    @staticmethod
    async def _exchange(conn: _Conn, req: bytes) -> tuple[int, bytes, bool]:
        conn.writer.write(req)
        await conn.writer.drain()
        head = await conn.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, keep = 0, True
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "connection" and v.strip().lower() == "close":
                keep = False
            elif k == "transfer-encoding":
                raise ValueError(f"unsupported Transfer-Encoding {v.strip()}")
        data = await conn.reader.readexactly(length) if length else b""
        return status, data, keep

    async def aclose(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()
