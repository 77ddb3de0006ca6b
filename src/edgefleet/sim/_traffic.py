"""Inference traffic for ``edgefleet demo``: digits samples sent to every agent's local API."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Traffic"]


@dataclass
class _DeviceStats:
    requests: int = 0
    errors: int = 0
    rate_limited: int = 0  # HTTP 429: the device's power policy limits its rate (``edgefleet.power``)
    by_version: dict[str, list[float]] = field(default_factory=dict)  # version -> [n, correct, conf_sum]
    recent: deque = field(default_factory=lambda: deque(maxlen=40))  # (correct, confidence)
    last_version: str | None = None
    last_error: str | None = None


class Traffic:
    """Sends digits test samples to every agent's local API from one asyncio loop in a thread."""

    def __init__(self, ports: dict[str, int], x: Any, y: Any, rate: float, seed: int) -> None:
        self.ports = ports
        self.x = x
        self.y = y
        self.rate = rate
        self.seed = seed
        self.stats = {name: _DeviceStats() for name in ports}
        # per device: a change applied to every input before it is sent (a region's shifted data)
        self.transform: dict[str, Any] = {}
        # the true label of each sampled answer (the local API names its request id): a scripted reviewer's
        # ground truth
        self.truth: dict[str, int] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-demo-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=4 * len(self.ports) + 4)
        async with httpx.AsyncClient(timeout=5.0, limits=limits) as client:
            await asyncio.gather(*(self._device(client, i, n) for i, n in enumerate(self.ports)))

    async def _device(self, client: Any, index: int, name: str) -> None:
        import httpx
        import numpy as np

        rng = np.random.default_rng(self.seed * 1000 + index)
        url = f"http://127.0.0.1:{self.ports[name]}/v1/predict"
        period = 1.0 / self.rate
        st = self.stats[name]
        health = f"http://127.0.0.1:{self.ports[name]}/healthz"
        while not self._stop.is_set():  # a client waits for the service to be healthy before using it
            try:
                if (await client.get(health)).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
        await asyncio.sleep(float(rng.uniform(0, period)))
        while not self._stop.is_set():
            t0 = time.monotonic()
            i = int(rng.integers(len(self.x)))
            try:
                fn = self.transform.get(name)
                x = self.x[i] if fn is None else fn(self.x[i])
                r = await client.post(url, json={"inputs": [x.tolist()]})
            except httpx.HTTPError as e:  # the agent is starting or swapping its API: not a model error
                with self.lock:
                    st.last_error = type(e).__name__
                await asyncio.sleep(0.5)
                continue
            with self.lock:
                if r.status_code == 200:
                    body = r.json()
                    version = body["model"]["version"]
                    pred = body["predictions"][0]
                    correct = float(pred.get("class") == int(self.y[i]))
                    conf = float(pred.get("confidence") or 0.0)
                    st.requests += 1
                    v = st.by_version.setdefault(version, [0, 0.0, 0.0])
                    v[0] += 1
                    v[1] += correct
                    v[2] += conf
                    st.recent.append((correct, conf))
                    st.last_version = version
                    st.last_error = None
                    if body.get("request_id"):
                        self.truth[body["request_id"]] = int(self.y[i])
                elif r.status_code == 404:  # no model active yet
                    st.last_error = "no model yet"
                elif r.status_code == 429:  # refused by the device's power policy: not a model error
                    st.rate_limited += 1
                else:
                    st.errors += 1
                    st.last_error = f"HTTP {r.status_code}"
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))

    def set_transform(self, names: list[str], fn: Any) -> None:
        """From now on, inputs sent to the ``names`` devices go through ``fn`` (None: as they are)."""
        with self.lock:
            for n in names:
                self.transform[n] = fn

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            out = {}
            for name, st in self.stats.items():
                rec = list(st.recent)
                out[name] = {
                    "requests": st.requests,
                    "errors": st.errors,
                    "rate_limited": st.rate_limited,
                    "accuracy": (sum(c for c, _ in rec) / len(rec)) if rec else None,
                    "confidence": (sum(c for _, c in rec) / len(rec)) if rec else None,
                    "last_version": st.last_version,
                    "last_error": st.last_error,
                    "by_version": {
                        v: {
                            "requests": int(n),
                            "accuracy": round(c / n, 4),
                            "mean_confidence": round(s / n, 4),
                        }
                        for v, (n, c, s) in st.by_version.items()
                        if n
                    },
                }
            return out
