"""A fault-injecting TCP proxy on loopback (toxiproxy's job, in-process): latency, loss, partitions, resets.

Each region of a simulated fleet reaches the server through its own proxy, so a fault applies to one
region only. The kernel here has no netem, so loss is modelled above TCP, as a lossy link looks to the
applications on it: a new connection whose handshake is lost is reset (RST) before it is forwarded; on a
connection already open, each chunk of bytes is lost with the same probability and then held back for a
retransmission timeout that doubles on each further loss (0.2 s, 0.4 s, 0.8 s, as TCP's does), and a
chunk lost more than ``MAX_RETRANSMITS`` times in a row resets the connection both ways (TCP giving up,
sooner than a real stack's ~15 tries). Open keep-alive connections therefore stall and sometimes break
under loss, not only new ones. A partition resets every connection (and the ones open when it starts)
until it is healed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultProxy", "FaultState"]

RTO_S = 0.2  # first retransmission timeout of a lost chunk on an open connection
MAX_RETRANSMITS = 3  # a chunk lost this many times more is given up on: the connection is reset


@dataclass
class FaultState:
    """What the proxy does to traffic right now."""

    latency_s: float = 0.0
    loss: float = 0.0  # share of new connections reset, and of chunks on open ones lost (stalled, reset)
    partitioned: bool = False


@dataclass
class ProxyStats:
    connections: int = 0
    reset: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    stalled: int = 0  # chunks on open connections held back by the loss fault (a retransmission)
    by_fault: dict[str, int] = field(default_factory=dict)

    def count(self, why: str) -> None:
        self.reset += 1
        self.by_fault[why] = self.by_fault.get(why, 0) + 1


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``target_host:target_port`` through the current :class:`FaultState`;
    when that server refuses the connection (killed), to the first of ``fallbacks`` that accepts it (a
    load balancer in front of replicas)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        name: str = "proxy",
        seed: int = 0,
        fallbacks: list[tuple[str, int]] | None = None,
    ) -> None:
        self.targets = [(target_host, target_port), *(fallbacks or [])]
        self.name = name
        self.state = FaultState()
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._open):
                _reset(w)
            if self._handlers:  # let them end on the resets (cancelling one makes asyncio log an error)
                await asyncio.wait(list(self._handlers), timeout=5)
            await self._server.wait_closed()

    def partition(self, on: bool = True) -> None:
        """Cut (or heal) the link; cutting resets every connection open through it."""
        self.state.partitioned = on
        if on:
            for w in list(self._open):
                self.stats.count("partition")
                _reset(w)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.stats.connections += 1
        st = self.state
        if st.partitioned or (st.loss and self._rng.random() < st.loss):
            self.stats.count("partition" if st.partitioned else "loss")
            _reset(writer)
            return
        for host, port in self.targets:
            try:
                up_r, up_w = await asyncio.open_connection(host, port)
                break
            except OSError:
                continue
        else:
            self.stats.count("server_unreachable")
            _reset(writer)
            return
        self._open.update((writer, up_w))
        try:
            await asyncio.gather(
                self._pipe(reader, up_w, writer, up=True), self._pipe(up_r, writer, up_w, up=False)
            )
        finally:
            self._open.discard(writer)
            self._open.discard(up_w)
            for w in (writer, up_w):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pipe(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter, other: asyncio.StreamWriter, *, up: bool
    ) -> None:
        try:
            while data := await r.read(65536):
                if self.state.latency_s:
                    await asyncio.sleep(self.state.latency_s)
                lost = 0
                while self.state.loss and self._rng.random() < self.state.loss:
                    lost += 1  # this chunk is lost: held back until it is "retransmitted"
                    if lost > MAX_RETRANSMITS:
                        self.stats.count("loss")
                        _reset(other)  # both ways: the peer sees the reset too
                        raise ConnectionResetError("loss: retransmissions exhausted")
                    self.stats.stalled += 1
                    await asyncio.sleep(RTO_S * 2 ** (lost - 1))
                if self.state.partitioned:
                    raise ConnectionResetError("partitioned")
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                w.write(data)
                await w.drain()
            if w.can_write_eof():
                w.write_eof()
        except (ConnectionError, OSError):
            _reset(w)


def _reset(w: Any) -> None:
    """Close with RST (SO_LINGER 0), as a dropped link looks to the peer."""
    sock = w.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        w.close()
