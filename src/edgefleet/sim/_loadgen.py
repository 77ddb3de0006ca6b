"""A lean heartbeat load generator: closed-loop, keep-alive HTTP/1.1 over asyncio streams.

Each request is a real ``Heartbeat`` of a real enrolled device. The client is written on raw
streams rather than httpx because a benchmark's client must cost far less CPU than the server it
measures (both share the same two cores here); it only speaks what the server answers (fixed
Content-Length responses).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "EnrollResult",
    "LoadResult",
    "heartbeat_body",
    "run_enroll_load",
    "run_heartbeat_load",
    "run_paced_heartbeats",
]


@dataclass
class LoadResult:
    requests: int
    ok: int
    errors: int
    status: dict[str, int]
    duration_s: float
    per_s: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def heartbeat_body(device_id: str, *, version: str = "1.0.0", sha256: str = "0" * 64) -> bytes:
    """A realistic heartbeat (active model, health, resources) as JSON bytes."""
    return json.dumps(
        {
            "device_id": device_id,
            "active": {
                "name": "digits",
                "version": version,
                "variant": "cpu",
                "target_path": f"digits/{version}/cpu.tar",
                "sha256": sha256,
            },
            "state": "idle",
            "health": {
                "requests": 120,
                "errors": 1,
                "latency_p50_ms": 2.1,
                "latency_p95_ms": 4.8,
                "mean_confidence": 0.93,
                "golden_pass": True,
                "drift_score": 0.04,
            },
            "resources": {"cpu_percent": 12.5, "rss_mb": 84.0, "disk_free_mb": 9000.0},
        },
        separators=(",", ":"),
    ).encode()


def _request(host: str, port: int, device_id: str, token: str, body: bytes) -> bytes:
    head = (
        f"POST /v1/devices/{device_id}/heartbeat HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Conn:
    """One keep-alive connection that sends a request and reads its fixed-length response."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, req: bytes, status: dict[str, int]) -> str | None:
        """The response's status code, or None after an I/O error (counted in ``status``)."""
        if self.writer is None:
            try:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                status["connect_error"] = status.get("connect_error", 0) + 1
                await asyncio.sleep(0.05)
                return None
        assert self.reader is not None
        try:
            self.writer.write(req)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            code = lines[0].split(" ", 2)[1]
            length = 0
            close = False
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v.strip())
                elif k == "connection" and v.strip().lower() == "close":
                    close = True
            if length:
                await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            status["io_error"] = status.get("io_error", 0) + 1
            self.close()
            return None
        if close:
            self.close()
        return code

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _worker(
    url: str,
    requests: list[bytes],
    stop_at: float,
    measure_from: float,
    latencies: list[float],
    status: dict[str, int],
) -> None:
    u = urlparse(url)
    conn = _Conn(u.hostname or "127.0.0.1", u.port or 80)
    i = 0
    while time.monotonic() < stop_at:
        req = requests[i % len(requests)]
        i += 1
        t0 = time.monotonic()
        code = await conn.exchange(req, status)
        if code is not None and t0 >= measure_from:
            latencies.append(time.monotonic() - t0)
            status[code] = status.get(code, 0) + 1
    conn.close()


async def run_heartbeat_load(
    urls: list[str],
    devices: list[tuple[str, str]],
    *,
    concurrency: int = 32,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    version: str = "1.0.0",
    sha256: str = "0" * 64,
) -> LoadResult:
    """Send heartbeats of ``devices`` (id, token) to ``urls`` (round-robin) from ``concurrency`` connections."""
    start = time.monotonic()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    latencies: list[float] = []
    status: dict[str, int] = {}
    workers = []
    for w in range(concurrency):
        url = urls[w % len(urls)]
        u = urlparse(url)
        mine = devices[w::concurrency] or devices
        reqs = [
            _request(
                u.hostname or "127.0.0.1",
                u.port or 80,
                d,
                t,
                heartbeat_body(d, version=version, sha256=sha256),
            )
            for d, t in mine
        ]
        workers.append(_worker(url, reqs, stop_at, measure_from, latencies, status))
    await asyncio.gather(*workers)
    return _result(status, latencies, duration_s)


def _result(status: dict[str, int], latencies: list[float], duration_s: float) -> LoadResult:
    ok = status.get("200", 0)
    total = sum(v for k, v in status.items() if k.isdigit())
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else None
    return LoadResult(
        requests=total,
        ok=ok,
        errors=total - ok + status.get("io_error", 0) + status.get("connect_error", 0),
        status=status,
        duration_s=duration_s,
        per_s=ok / duration_s,
        p50_ms=round(q[49] * 1000, 3) if q else None,
        p99_ms=round(q[98] * 1000, 3) if q else None,
        mean_ms=round(statistics.fmean(lat) * 1000, 3) if lat else None,
    )


async def run_paced_heartbeats(
    urls: list[str],
    devices: list[tuple[str, str]],
    *,
    interval_s: float = 60.0,
    duration_s: float = 600.0,
    connections: int = 64,
) -> LoadResult:
    """Open loop: every device sends a heartbeat every ``interval_s`` (devices spread evenly over the
    interval, as a fleet's jitter spreads them), for ``duration_s``; ``connections`` keep-alive
    connections carry them. A heartbeat that cannot leave on time leaves late and its wait counts in
    its latency (no coordinated omission)."""
    start = time.monotonic() + 1.0
    n = len(devices)
    latencies: list[float] = []
    status: dict[str, int] = {}

    async def worker(w: int) -> None:
        url = urls[w % len(urls)]
        u = urlparse(url)
        host, port = u.hostname or "127.0.0.1", u.port or 80
        conn = _Conn(host, port)
        mine = [(i, d, t) for i, (d, t) in enumerate(devices) if i % connections == w]
        reqs = {d: _request(host, port, d, t, heartbeat_body(d)) for _, d, t in mine}
        k = 0
        while True:
            for i, d, _ in mine:
                due = start + k * interval_s + interval_s * i / n
                if due >= start + duration_s:
                    conn.close()
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                code = await conn.exchange(reqs[d], status)
                if code is not None:
                    latencies.append(time.monotonic() - due)
                    status[code] = status.get(code, 0) + 1
            k += 1

    await asyncio.gather(*(worker(w) for w in range(min(connections, n))))
    return _result(status, latencies, duration_s)


@dataclass
class EnrollResult:
    devices: list[tuple[str, str]]  # (device id, device token) of each device that enrolled
    errors: int
    seconds: float
    per_s: float


async def run_enroll_load(url: str, tokens: list[str], *, concurrency: int = 32) -> EnrollResult:
    """Enroll one device per one-time enrollment token through ``POST /v1/enroll`` (real requests, real
    database writes), ``concurrency`` at a time; then each reports once, as an agent does."""
    import httpx

    queue = list(reversed(tokens))
    devices: list[tuple[str, str]] = []
    errors = 0
    hw = {"arch": "x86_64", "cores": 4, "ram_mb": 2048, "disk_free_mb": 10_000, "device_class": "cpu"}

    async def worker(c: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue:
            tok = queue.pop()
            try:
                r = await c.post("/v1/enroll", json={"token": tok, "hardware": hw})
                if r.status_code != 200:
                    errors += 1
                    continue
                body = r.json()
                devices.append((body["device_id"], body["device_token"]))
            except httpx.HTTPError:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        seconds = time.monotonic() - t0
        for i in range(0, len(devices), concurrency):  # the first report: "pending" until then
            await asyncio.gather(
                *(
                    c.post(
                        f"/v1/devices/{d}/heartbeat",
                        content=heartbeat_body(d),
                        headers={"Authorization": f"Bearer {t}", "Content-Type": "application/json"},
                    )
                    for d, t in devices[i : i + concurrency]
                )
            )
    return EnrollResult(devices, errors, round(seconds, 3), round(len(devices) / seconds, 1))


def main(argv: list[str] | None = None) -> None:
    """``python -m edgefleet.sim._loadgen SPEC.json``: run a load described by a JSON file, print JSON."""
    import sys

    args = argv if argv is not None else sys.argv[1:]
    with open(args[0]) as f:
        spec = json.load(f)
    devices = [tuple(x) for x in spec["devices"]]
    if spec.get("mode") == "paced":
        load = run_paced_heartbeats(
            spec["urls"],
            devices,
            interval_s=spec["interval_s"],
            duration_s=spec["duration_s"],
            connections=spec.get("concurrency", 64),
        )
    else:
        load = run_heartbeat_load(
            spec["urls"],
            devices,
            concurrency=spec.get("concurrency", 32),
            duration_s=spec.get("duration_s", 10.0),
            warmup_s=spec.get("warmup_s", 2.0),
        )
    res = asyncio.run(load)
    sys.stdout.write(json.dumps(res.to_dict()) + "\n")


if __name__ == "__main__":
    main()
