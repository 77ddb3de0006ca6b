"""The fault-injecting proxy's loss fault on connections already open (not only on new ones)."""

from __future__ import annotations

import asyncio

from edgefleet.sim import _faults
from edgefleet.sim._faults import MAX_RETRANSMITS, FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _exchange(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> tuple[int, bool]:
    """Send ``n`` one-line messages on one connection; how many came back before it was reset."""
    back = 0
    try:
        for i in range(n):
            w.write(f"{i}\n".encode())
            await w.drain()
            line = await asyncio.wait_for(r.readline(), 10)
            if not line:
                return back, True
            assert line == f"{i}\n".encode()
            back += 1
    except (ConnectionError, OSError):
        return back, True
    return back, False


def test_loss_stalls_and_breaks_connections_that_were_already_open(monkeypatch):
    monkeypatch.setattr(_faults, "RTO_S", 0.02)  # retransmission timeouts 10x shorter: a quick test

    async def main() -> None:
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = echo.sockets[0].getsockname()[1]
        proxy = await FaultProxy("127.0.0.1", port, name="eu", seed=3).start()
        try:
            # keep-alive connections opened before the fault, as a fleet's are
            conns = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(6)]
            for r, w in conns:
                assert await _exchange(r, w, 1) == (1, False)
            assert proxy.stats.connections == 6 and proxy.stats.stalled == 0
            proxy.state.loss = 0.5
            results = await asyncio.gather(*(_exchange(r, w, 10) for r, w in conns))
            # lost chunks were held back (retransmitted) on the open connections, and some of them
            # were lost often enough in a row that the proxy gave up and reset them
            assert proxy.stats.stalled > 0
            assert proxy.stats.by_fault.get("loss", 0) >= 1
            assert any(broken for _, broken in results) and any(back > 1 for back, _ in results)
            assert proxy.stats.connections == 6  # all of it on the connections that were already open
            proxy.state.loss = 0.0
            survivors = [(r, w) for (r, w), (_, broken) in zip(conns, results, strict=True) if not broken]
            before = proxy.stats.stalled
            for r, w in survivors:
                assert await _exchange(r, w, 3) == (3, False)
            assert proxy.stats.stalled == before  # healed: nothing held back any more
            for _, w in conns:
                w.close()
        finally:
            await proxy.close()
            echo.close()
            await echo.wait_closed()

    assert MAX_RETRANSMITS >= 1
    asyncio.run(main())
