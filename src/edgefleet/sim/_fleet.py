"""Simulated devices speaking the real HTTP protocol to a real control plane.

A simulated device enrolls with a real enrollment token, sends real ``Heartbeat`` JSON, follows the
director's assignments and rollback commands, and reports health drawn from the behaviour its
scenario gives the release it runs. It downloads nothing and runs no model: that is the agent's job
(``edgefleet.agent``); the simulator exists to put a thousand devices in front of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgefleet.errors import ServerError
from edgefleet.sim._http import HttpPool, PoolError

__all__ = ["ReleaseBehavior", "Scenario", "SimDevice", "Fleet"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseBehavior:
    """How a release behaves on a simulated device (what its heartbeats report)."""

    error_rate: float = 0.01
    latency_p95_ms: float = 5.0
    mean_confidence: float = 0.95
    golden_pass: bool = True
    shadow_agreement: float | None = None
    drift_score: float | None = 0.05
    requests_per_beat: int = 50
    install_fails: bool = False


@dataclass
class Scenario:
    """A fleet's make-up and the behaviour of each release version.

    Args:
        behaviors: version -> behaviour; versions not listed behave like ``default``.
        class_behaviors: (version, device class) -> behaviour, before ``behaviors`` (a release bad on
            some classes only).
        install_delay_s: simulated download + health check time before an assignment is active.
        poll_interval_s: override the server's advice (scaled-down time for tests and benchmarks).
        jitter: +/- fraction of jitter on each wait.
        device_classes: class -> share of the fleet.
        tags: tags every device reports.
        ram_mb, onnxruntime_version, isa_flags: hardware profile reported at enrollment.
    """

    behaviors: dict[str, ReleaseBehavior] = field(default_factory=dict)
    class_behaviors: dict[tuple[str, str], ReleaseBehavior] = field(default_factory=dict)
    default: ReleaseBehavior = field(default_factory=ReleaseBehavior)
    install_delay_s: float = 0.2
    poll_interval_s: float | None = None
    jitter: float = 0.2
    device_classes: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0})
    tags: dict[str, str] = field(default_factory=dict)
    ram_mb: int = 1024
    onnxruntime_version: str = "1.20.0"
    isa_flags: list[str] = field(default_factory=lambda: ["sse4_2", "avx2"])

    def behavior(self, version: str | None, device_class: str | None = None) -> ReleaseBehavior:
        found = self.class_behaviors.get((version or "", device_class or ""))
        return found or self.behaviors.get(version or "", self.default)


@dataclass
class SimDevice:
    """One simulated device's credentials and state."""

    index: int
    device_class: str
    device_id: str = ""
    token: str = ""
    active: dict[str, Any] | None = None
    kept: list[dict[str, Any]] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    installing: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    poll_interval: float = 60.0
    nudge: asyncio.Event | None = None
    beats: int = 0
    errors: int = 0
    skew_s: float = 0.0  # the device's clock is this far off (clock_skew fault)
    offline_until: float = 0.0  # monotonic time until which the device is away (no requests)
    crash: tuple[str, int, float] | None = None  # (sha256, restarts, window) of a build that crash-loops
    restarts: int = 0
    vanished: int = 0  # downloads interrupted by going offline
    next_upload: float = 0.0

    @property
    def version(self) -> str | None:
        return self.active["version"] if self.active else None


class Fleet:
    """A fleet of simulated devices against one control plane.

    Args:
        server_url: the control plane, e.g. ``http://127.0.0.1:8700``; a list spreads the devices
            over several server processes.
        scenario: fleet make-up and release behaviours.
        size: number of devices.
        admin_token: an admin operator token (to create enrollment tokens).
        mqtt_url: subscribe to nudges (``edgefleet/devices/+/nudge``) and poll at once on one.
        seed: randomness of health figures and jitter.
        max_connections: HTTP connections shared by all devices.
        route: which of ``server_url``'s addresses a device talks to (default: spread by index), e.g.
            its region's fault-injecting proxy.
        indices: simulate only these devices of a ``size``-device fleet (one worker's share: classes are
            drawn over the whole fleet, names and seeds follow the global index).
    """

    def __init__(
        self,
        server_url: str | list[str],
        scenario: Scenario,
        *,
        size: int,
        admin_token: str,
        mqtt_url: str | None = None,
        seed: int = 0,
        max_connections: int = 64,
        timeout_s: float = 30.0,
        route: Callable[[SimDevice], int] | None = None,
        indices: list[int] | range | None = None,
    ) -> None:
        urls = [server_url] if isinstance(server_url, str) else list(server_url)
        self.urls = [u.rstrip("/") for u in urls]
        self.url = self.urls[0]
        self.scenario = scenario
        self.admin_token = admin_token
        self.mqtt_url = mqtt_url
        self.rng = random.Random(seed)
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.route = route or (lambda d: d.index % len(self.urls))
        classes = list(scenario.device_classes.items())
        self.devices: list[SimDevice] = []
        for i in indices if indices is not None else range(size):
            cls = self._pick_class(classes, i, size)
            self.devices.append(SimDevice(index=i, device_class=cls))
        self.by_id: dict[str, SimDevice] = {}
        self.ever_ran: dict[str, set[str]] = {}
        self.switches: list[tuple[float, str, str | None, str | None]] = []  # (wall time, device, from, to)
        self.nudges = 0
        self.heartbeats = 0
        self.http_errors = 0
        self.status_counts: dict[str, int] = {}
        self.error_kinds: dict[str, int] = {}  # io_error by cause (TimeoutError, ConnectionResetError, ...)
        # Optional behaviours (fault injection in ``edgefleet sim``), all off by default:
        # windows_for(device, end, length_s) -> telemetry windows to upload every telemetry_every_s;
        # crash_loop(device, version) -> the build crash-loops on start on this device;
        # vanish(device) -> seconds the device goes offline when it starts a download (0: it stays).
        self.telemetry_every_s = 0.0
        self.windows_for: Callable[[SimDevice, float, float], list[dict[str, Any]]] | None = None
        self.crash_loop: Callable[[SimDevice, str], bool] | None = None
        self.vanish: Callable[[SimDevice], float] | None = None
        self.telemetry_counts: dict[str, int] = {}
        self.windows_sent = 0
        self.crash_rollbacks = 0
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def _pick_class(classes: list[tuple[str, float]], i: int, n: int) -> str:
        total = sum(w for _, w in classes)
        pos = (i + 0.5) / n * total
        acc = 0.0
        for name, w in classes:
            acc += w
            if pos <= acc:
                return name
        return classes[-1][0]

    # --- setup ---------------------------------------------------------------------------------

    async def enroll(
        self,
        *,
        tags_for: Callable[[SimDevice], dict[str, str]] | None = None,
        hardware_for: Callable[[SimDevice], dict[str, Any]] | None = None,
    ) -> None:
        """Create one enrollment token per device (as the operator: ``POST /v1/enrollment-tokens``, what
        ``edgefleet.client.Client.create_enrollment_token`` sends) and enroll every device with its own."""
        sem = asyncio.Semaphore(self.max_connections)
        pool = HttpPool(self.url, max_connections=self.max_connections, timeout_s=self.timeout_s)
        admin = {"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"}

        async def one(d: SimDevice) -> None:
            tags = {**self.scenario.tags, **(tags_for(d) if tags_for else {})}
            async with sem:
                for attempt in range(3):  # a connection reset under us, or a 5xx: a fresh token
                    try:
                        tok = _json(
                            await pool.request(
                                "POST", "/v1/enrollment-tokens", json.dumps({"tags": tags}).encode(), admin
                            ),
                            "enrollment token",
                        )
                        hw = hardware_for(d) if hardware_for else {}
                        await self._enroll_one(pool, d, tok["token"], tags, hw)
                        return
                    except (PoolError, ServerError) as e:
                        retry = isinstance(e, PoolError) or e.details.get("status", 500) >= 500
                        if attempt == 2 or not retry:
                            raise
                        await asyncio.sleep(0.2 * (attempt + 1))

        try:
            await asyncio.gather(*(one(d) for d in self.devices))
        finally:
            await pool.aclose()
        self.by_id = {d.device_id: d for d in self.devices}

    async def _enroll_one(
        self, c: HttpPool, d: SimDevice, token: str, tags: dict[str, str], profile: dict[str, Any]
    ) -> None:
        hw = {
            "arch": "x86_64",
            "cores": 4,
            "ram_mb": self.scenario.ram_mb,
            "disk_free_mb": 10_000,
            "isa_flags": self.scenario.isa_flags,
            "onnxruntime_version": self.scenario.onnxruntime_version,
            "device_class": d.device_class,
            "tags": tags,
            **profile,
        }
        ctype = {"Content-Type": "application/json"}
        body = {"token": token, "name": f"sim-{d.index}", "hardware": hw}
        got = _json(await c.request("POST", "/v1/enroll", json.dumps(body).encode(), ctype), "enroll")
        d.device_id, d.token = got["device_id"], got["device_token"]
        d.poll_interval = got["poll_interval_s"]
        # Like an agent, report once right away: until its first heartbeat a device is "pending" and
        # is never admitted to a rollout.
        beat = json.dumps({"device_id": d.device_id, "state": "enrolled"}).encode()
        _json(
            await c.request(
                "POST",
                f"/v1/devices/{d.device_id}/heartbeat",
                beat,
                {**ctype, "Authorization": f"Bearer {d.token}"},
            ),
            "heartbeat",
        )

    def preinstall(self, active: dict[str, Any] | Callable[[SimDevice], dict[str, Any] | None]) -> None:
        """Start devices on a release (an ``ActiveModel`` dict, or a function of the device)."""
        for d in self.devices:
            a = active(d) if callable(active) else active
            d.active = dict(a) if a else None
            if d.active:
                self.ever_ran.setdefault(d.active["version"], set()).add(d.device_id)

    # --- running -------------------------------------------------------------------------------

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(
        self, *, until: Callable[[Fleet], bool] | None = None, timeout: float = 60.0, check_every: float = 0.1
    ) -> bool:
        """Run every device's loop until ``until(fleet)`` is true or ``timeout`` passes.

        Returns:
            True when ``until`` was met (or none was given and the time ran out normally).
        """
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for d in self.devices:
            d.nudge = asyncio.Event()
        mqtt = self._start_mqtt() if self.mqtt_url else None
        met = until is None
        # The hot path's client: a lean keep-alive pool per address (httpx's pool costs O(queued) per
        # request, which at thousands of devices was the simulator's whole CPU; see sim/_http.py).
        clients = [
            HttpPool(u, max_connections=self.max_connections, timeout_s=self.timeout_s) for u in self.urls
        ]
        try:
            async with contextlib.AsyncExitStack() as stack:
                for c in clients:
                    stack.push_async_callback(c.aclose)
                tasks = [
                    asyncio.create_task(self._device_loop(clients[self.route(d)], d)) for d in self.devices
                ]
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and not self._stop.is_set():
                    if until is not None and until(self):
                        met = True
                        break
                    await asyncio.sleep(check_every)
                self._stop.set()
                for d in self.devices:
                    d.nudge.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if mqtt is not None:
                mqtt.loop_stop()
                mqtt.disconnect()
        return met

    async def _device_loop(self, c: HttpPool, d: SimDevice) -> None:
        rng = random.Random(self.rng.random())
        await asyncio.sleep(
            rng.uniform(0, min(d.poll_interval, self.scenario.poll_interval_s or d.poll_interval))
        )
        while not self._stop.is_set():
            if d.offline_until > time.monotonic():
                await self._away(d.offline_until - time.monotonic())
                continue
            await self._beat(c, d, rng)
            if d.crash is not None:
                await self._crash_loop(d)
                continue
            uploads = self.windows_for is not None and self.telemetry_every_s > 0
            if uploads and d.active is not None and time.monotonic() >= d.next_upload:
                d.next_upload = time.monotonic() + self.telemetry_every_s
                await self._upload(c, d)
            if d.offline_until > time.monotonic():
                continue
            base = self.scenario.poll_interval_s or d.poll_interval
            wait = base * (1 + rng.uniform(-self.scenario.jitter, self.scenario.jitter))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(d.nudge.wait(), timeout=max(0.01, wait))
            d.nudge.clear()

    async def _away(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, seconds))

    @staticmethod
    def now(d: SimDevice) -> float:
        """The device's own wall clock (skewed by a clock_skew fault)."""
        return time.time() + d.skew_s

    async def _crash_loop(self, d: SimDevice) -> None:
        """The build just activated crashes on start: the agent restarts ``restarts`` times (no requests
        meanwhile), then rolls itself back to the build it ran before, as the agent's crash-loop rule does."""
        sha, restarts, window = d.crash or ("", 0, 0.0)
        d.crash = None
        version = d.version
        for k in range(restarts):
            await self._away(max(0.05, self.scenario.install_delay_s))
            if self._stop.is_set():
                return
            d.restarts += 1
            d.events.append(
                {"t": self.now(d), "event": "agent_restarted", "boot": k + 1, "watching": version}
            )
        target = next((k for k in reversed(d.kept) if k["sha256"] != sha), None)
        d.failed.add(sha)
        if target is None:
            return
        self._switch(d, target)
        self.crash_rollbacks += 1
        d.events.append(
            {
                "t": self.now(d),
                "event": "rolled_back",
                "to": target["version"],
                "auto": True,
                "reason": f"crash loop: {restarts} agent restarts within {window:.0f}s while watching {version}",
            }
        )

    async def _upload(self, c: HttpPool, d: SimDevice) -> None:
        assert self.windows_for is not None
        windows = self.windows_for(d, self.now(d), self.telemetry_every_s)
        if not windows:
            return
        body = {"batch_id": uuid.uuid4().hex, "device_id": d.device_id, "windows": windows}
        try:
            status, _ = await c.request(
                "POST",
                f"/v1/devices/{d.device_id}/telemetry",
                json.dumps(body).encode(),
                {"Authorization": f"Bearer {d.token}", "Content-Type": "application/json"},
            )
            code = str(status)
        except PoolError:
            code = "io_error"  # lost: this simulator keeps no outbox
        self.telemetry_counts[code] = self.telemetry_counts.get(code, 0) + 1
        if code == "200":
            self.windows_sent += len(windows)

    def heartbeat_body(self, d: SimDevice, rng: random.Random) -> dict[str, Any]:
        b = self.scenario.behavior(d.version, d.device_class)
        health: dict[str, Any] = {}
        if d.active is not None:
            n = b.requests_per_beat
            errors = (
                sum(1 for _ in range(n) if rng.random() < b.error_rate)
                if n <= 200
                else round(n * b.error_rate)
            )
            health = {
                "requests": n,
                "errors": errors,
                "latency_p50_ms": round(b.latency_p95_ms * 0.6, 3),
                "latency_p95_ms": round(b.latency_p95_ms * rng.uniform(0.9, 1.1), 3),
                "mean_confidence": round(min(1.0, b.mean_confidence * rng.uniform(0.98, 1.02)), 4),
                "golden_pass": b.golden_pass,
            }
            if b.shadow_agreement is not None:
                health["shadow_agreement"] = b.shadow_agreement
            if b.drift_score is not None:
                health["drift_score"] = round(b.drift_score * rng.uniform(0.8, 1.2), 4)
        events, d.events = d.events[-100:], []
        return {
            "device_id": d.device_id,
            "sent_at": datetime.fromtimestamp(self.now(d), UTC).isoformat(),
            "active": d.active,
            "state": "downloading" if d.installing else ("idle" if d.active else "empty"),
            "health": health,
            "resources": {"cpu_percent": round(rng.uniform(5, 40), 1), "rss_mb": 80.0},
            "events": events,
        }

    async def _beat(self, c: HttpPool, d: SimDevice, rng: random.Random) -> None:
        body = self.heartbeat_body(d, rng)
        try:
            status, data = await c.request(
                "POST",
                f"/v1/devices/{d.device_id}/heartbeat",
                json.dumps(body, separators=(",", ":")).encode(),
                {"Authorization": f"Bearer {d.token}", "Content-Type": "application/json"},
            )
        except PoolError as e:
            d.errors += 1
            self.http_errors += 1
            self.status_counts["io_error"] = self.status_counts.get("io_error", 0) + 1
            kind = type(e.__cause__ or e).__name__
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
            d.events = body["events"] + d.events  # not delivered: send again next time
            log.debug("heartbeat of %s failed: %s", d.device_id, e)
            return
        self.status_counts[str(status)] = self.status_counts.get(str(status), 0) + 1
        if status != 200:
            d.errors += 1
            self.http_errors += 1
            d.events = body["events"] + d.events
            return
        d.beats += 1
        self.heartbeats += 1
        resp = json.loads(data)
        d.poll_interval = resp.get("poll_interval_s", d.poll_interval)
        for cmd in resp.get("commands", []):
            self._command(d, cmd)
        a = resp.get("assignment")
        if a is not None:
            self._assigned(d, a)

    def _switch(self, d: SimDevice, new: dict[str, Any] | None) -> None:
        old = d.version
        if d.active is not None and new is not None and d.active["sha256"] != new["sha256"]:
            d.kept = [k for k in d.kept if k["sha256"] != d.active["sha256"]] + [d.active]
            d.kept = d.kept[-3:]
        d.active = new
        if new is not None:
            self.ever_ran.setdefault(new["version"], set()).add(d.device_id)
        self.switches.append((time.time(), d.device_id, old, new["version"] if new else None))

    def _command(self, d: SimDevice, cmd: str) -> None:
        if not (cmd == "rollback" or cmd.startswith("rollback:")):
            return
        want = cmd.split(":", 1)[1] if ":" in cmd else None
        target = None
        for k in reversed(d.kept):
            if (want is None and (d.active is None or k["sha256"] != d.active["sha256"])) or k[
                "version"
            ] == want:
                target = k
                break
        if target is None:
            return
        if d.active is not None:
            d.failed.add(d.active["sha256"])
        d.installing = None
        self._switch(d, target)
        d.events.append({"t": self.now(d), "event": "rolled_back", "to": target["version"], "auto": False})

    def _assigned(self, d: SimDevice, a: dict[str, Any]) -> None:
        sha = a["hashes"]["sha256"]
        if (d.active is not None and d.active["sha256"] == sha) or sha in d.failed or d.installing == sha:
            return
        kept = next((k for k in d.kept if k["sha256"] == sha), None)
        if kept is not None:
            self._switch(d, kept)
            return
        d.installing = sha
        delay = self.scenario.install_delay_s
        gone = self.vanish(d) if self.vanish is not None else 0.0
        if gone > 0:  # the device vanishes mid-download and resumes it when it is back
            d.offline_until = time.monotonic() + gone
            d.vanished += 1
            d.events.append(
                {"t": self.now(d), "event": "download_resumed", "sha256": sha[:12], "away_s": gone}
            )
            delay += gone
        asyncio.get_running_loop().call_later(delay, self._installed, d, a)

    def _installed(self, d: SimDevice, a: dict[str, Any]) -> None:
        sha = a["hashes"]["sha256"]
        if d.installing != sha:
            return  # superseded (rollback command, new assignment)
        d.installing = None
        if self.scenario.behavior(a["version"], d.device_class).install_fails:
            d.failed.add(sha)
            d.events.append(
                {
                    "t": self.now(d),
                    "event": "refused",
                    "sha256": sha[:12],
                    "reason": "simulated health check failure",
                    "permanent": True,
                }
            )
            return
        self._switch(
            d,
            {
                "name": a["name"],
                "version": a["version"],
                "variant": a["variant"],
                "target_path": a["target_path"],
                "sha256": sha,
            },
        )
        d.events.append({"t": self.now(d), "event": "activated", "version": a["version"], "sha256": sha[:12]})
        if self.crash_loop is not None and self.crash_loop(d, a["version"]):
            g = a.get("gates") or {}
            d.crash = (sha, int(g.get("crash_loop_failures", 3)), float(g.get("crash_loop_window_s", 300.0)))
        if d.nudge is not None:
            d.nudge.set()  # report the new version at once, like the agent does after activation

    # --- MQTT ----------------------------------------------------------------------------------

    def _start_mqtt(self) -> Any:
        from urllib.parse import urlparse

        import paho.mqtt.client as mqtt

        u = urlparse(self.mqtt_url)
        from edgefleet.agent._nudge import nudge_delay

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        loop = self._loop
        rng = random.Random(0)
        ready = threading.Event()

        def on_connect(cl, userdata, flags, rc, props=None):  # noqa: ANN001
            cl.subscribe("edgefleet/devices/+/nudge", qos=1)

        def on_subscribe(cl, userdata, mid, reason_codes, props=None):  # noqa: ANN001
            ready.set()  # nudges published from now on reach us

        def on_message(cl, userdata, msg):  # noqa: ANN001
            parts = msg.topic.split("/")
            d = self.by_id.get(parts[2]) if len(parts) >= 4 else None
            if d is not None and d.nudge is not None:
                self.nudges += 1
                # poll now, or within the spread the server asked for: the agent's own rule
                loop.call_soon_threadsafe(loop.call_later, nudge_delay(msg.payload, rng), d.nudge.set)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        try:
            client.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
        except OSError as e:
            log.warning("simulated fleet cannot reach the MQTT broker (%s); polling only", e)
            return None
        client.loop_start()
        ready.wait(5)
        return client

    # --- figures -------------------------------------------------------------------------------

    def count_on(self, version: str | None) -> int:
        return sum(1 for d in self.devices if d.version == version)

    def ran(self, version: str) -> set[str]:
        return set(self.ever_ran.get(version, set()))


def _json(answer: tuple[int, bytes], what: str) -> Any:
    status, body = answer
    if status >= 400:
        text = body[:300].decode("utf-8", "replace")
        raise ServerError(
            f"{what} failed with HTTP {status}: {text}", hint="check the server log", status=status
        )
    return json.loads(body)
