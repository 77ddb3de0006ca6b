"""``edgefleet sim``: run a scenario — a real control plane, a simulated fleet behind fault-injecting
proxies (one per region), a gated rollout of the scenario's candidate — and check its expected outcome.

The devices are :class:`edgefleet.sim.Fleet` devices: each enrolls with its own token, heartbeats the real
protocol and follows the director's assignments and rollback commands; the health they report comes from
the release and their device class. They download no artifact (the install takes ``install_delay_s``).
A large fleet is split over worker processes (``workers``), each with its own event loop, HTTP pool and
region proxies; the coordinator here owns the server, the rollout, the samples and the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.client import Client
from edgefleet.sim._faults import FaultProxy
from edgefleet.sim._fleet import Fleet, ReleaseBehavior, Scenario
from edgefleet.sim._scenario import Behavior, Fault, SimScenario
from edgefleet.sim._simreport import overall
from edgefleet.sim._windows import WindowMaker, seed_of

__all__ = ["build_repository", "run_scenario"]

FINAL = ("completed", "rolled_back", "aborted")
# Faults that act on the simulated devices themselves; they run side by side (the network faults in turn).
DEVICE_FAULTS = ("crash_loop", "clock_skew", "offline_mid_update", "drift")
HEARTBEAT_ROUTE = "/v1/devices/{device_id}/heartbeat"
HEARTBEAT_HISTOGRAM = "edgefleet_http_request_duration_seconds"  # the server's request histogram


def build_repository(work: Path, versions: list[str], classes: list[str], *, seed: int = 0) -> Path:
    """A TUF repository holding a small digits MLP per version, bundled once per device class (the
    variant a device of that class is given); returns its folder (kept in ``work`` for the next run)."""
    from edgefleet.bundle import create_bundle
    from edgefleet.examples import digits, train_digits_mlp
    from edgefleet.registry import Repository, init_keys

    repo_dir = work / ("repo-" + "-".join(sorted(versions)) + "-" + "-".join(sorted(classes)))
    if (repo_dir / "metadata").is_dir():
        return repo_dir
    data = digits(seed=0)
    repo = Repository.init(
        repo_dir, init_keys(work / (repo_dir.name + ".keys"), root_keys=1, root_threshold=1)
    )
    for i, version in enumerate(versions):
        model = work / f"model-{version}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at a small max_iter
            train_digits_mlp(model, hidden=(16,), seed=seed + i, max_iter=40, data=data)
        for cls in classes:
            out = create_bundle(
                model,
                work / f"{version}-{cls}.tar",
                name="digits",
                version=version,
                variant=cls,
                inputs_raw=data.x_test[:8],
                reference_raw=data.x_train,  # reference.json: what the fleet's drift detection compares to
                preprocess=[{"op": "scale", "factor": 1 / 16}],
                created=datetime(2025, 1, 2, tzinfo=UTC),
            )
            repo.publish(out, delta=False)
    return repo_dir


def _behavior(b: Behavior) -> ReleaseBehavior:
    return ReleaseBehavior(
        error_rate=b.error_rate,
        latency_p95_ms=b.latency_p95_ms,
        mean_confidence=b.mean_confidence,
        drift_score=b.drift_score,
        install_fails=b.install_fails,
    )


def _share_index(shares: list[float], i: int, n: int) -> int:
    total, acc = sum(shares), 0.0
    pos = (i + 0.5) / n * total
    for k, w in enumerate(shares):
        acc += w
        if pos <= acc:
            return k
    return len(shares) - 1


class _Side:
    """One share of the fleet (in this process, or in a worker process): its devices, a fault-injecting
    proxy per region, and the faults that act on them (network faults on its proxies, herd nudges,
    faults on the devices themselves). The coordinator (:class:`_Run`) owns the server, the rollout and
    the faults only it can do (``kill_server``, a namespace's link)."""

    def __init__(
        self,
        sc: SimScenario,
        indices: list[int],
        *,
        server_url: str,
        targets: list[tuple[str, int]],
        admin_token: str,
        seed: int,
        worker: int,
        repo_dir: str | None,
        work: str | None,
        direct: bool = False,
        skip_faults: tuple[int, ...] = (),
    ) -> None:
        self.sc, self.indices, self.server_url, self.targets = sc, indices, server_url, targets
        self.token, self.seed, self.worker = admin_token, seed, worker
        self.repo_dir = Path(repo_dir) if repo_dir else None
        self.work = Path(work) if work else None
        self.direct = direct  # devices talk to targets[0] straight (a namespace's link, no proxy)
        self.skip = set(skip_faults)  # fault indexes the coordinator does itself
        self.regions = list(sc.regions)
        self.region_of = {i: _share_index(list(sc.regions.values()), i, sc.devices) for i in indices}
        self.faults: list[dict[str, Any]] = []
        self.live: list[tuple[Fault, dict[str, Any]]] = []
        self.net = [
            (i, f) for i, f in enumerate(sc.faults)
            if f.kind not in DEVICE_FAULTS and f.kind != "kill_server" and i not in self.skip
        ]  # fmt: skip
        self.faults_done = not self.net
        self.device_faults_pending = sum(1 for f in sc.faults if f.kind in DEVICE_FAULTS)
        self.t0 = time.monotonic()
        self.started: list[str] = []
        self._stopping = False

    # --- lifecycle (the coordinator's commands) ---------------------------------------------------

    async def setup(self, by_class: dict[str, dict[str, Any]]) -> None:
        sc = self.sc
        (host, port), rest = self.targets[0], self.targets[1:]
        self.proxies = []
        if not self.direct:
            self.proxies = [
                await FaultProxy(host, port, name=r, seed=self.seed + self.worker, fallbacks=rest).start()
                for r in self.regions
            ]
        scenario = Scenario(
            behaviors={r.version: _behavior(r.behavior) for r in (sc.baseline, sc.candidate)},
            class_behaviors={
                (r.version, c): _behavior(b)
                for r in (sc.baseline, sc.candidate)
                for c, b in r.classes.items()
            },
            install_delay_s=sc.install_delay_s,
            poll_interval_s=sc.poll_interval_s,
            jitter=sc.jitter,
            device_classes={c.name: c.share for c in sc.classes},
        )
        urls = [f"http://{host}:{port}"] if self.direct else [p.url for p in self.proxies]
        self.fleet = fleet = Fleet(
            urls,
            scenario,
            size=sc.devices,
            indices=self.indices,
            admin_token=self.token,
            seed=self.seed + 7919 * self.worker,
            max_connections=min(128, max(8, len(self.indices) // 8)),
            route=(lambda d: 0) if self.direct else (lambda d: self.region_of[d.index]),
        )
        fleet.url = self.server_url  # enrollment (an operator's job) goes to the server itself
        self._device_hooks(fleet)
        rng = random.Random(self.seed + self.worker)
        classes = {c.name: c for c in sc.classes}

        def hardware(d: Any) -> dict[str, Any]:
            c = classes[d.device_class]
            return {"ram_mb": rng.randint(*c.ram_mb), "cores": rng.randint(*c.cores), "arch": c.arch}

        await fleet.enroll(
            tags_for=lambda d: {"region": self.regions[self.region_of[d.index]]}, hardware_for=hardware
        )
        keys = ("variant", "target_path", "sha256")
        fleet.preinstall(
            lambda d: {
                "name": "digits",
                "version": sc.baseline.version,
                **{k: by_class[d.device_class][k] for k in keys},
            }
        )

    async def baseline(self) -> None:
        await self.fleet.run(timeout=3 * self.sc.poll_interval_s)  # the control group reports on the baseline

    async def run(self, t0_wall: float) -> None:
        self.t0 = time.monotonic() - (time.time() - t0_wall)
        self._stopping = False
        tasks = [
            asyncio.create_task(self._net_faults()),
            *(
                asyncio.create_task(self._device_fault(i, f))
                for i, f in enumerate(self.sc.faults)
                if f.kind in DEVICE_FAULTS
            ),
        ]
        try:
            await self.fleet.run(
                until=lambda _: self._stopping, timeout=self.sc.timeout_s + 60, check_every=0.2
            )
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stopping = True

    def snapshot(self) -> dict[str, Any]:
        f = self.fleet
        return {
            "versions": {v: f.count_on(v) for v in (self.sc.baseline.version, self.sc.candidate.version)},
            "heartbeats": f.heartbeats,
            "errors": f.http_errors,
            "faults_done": self.faults_done,
            "device_faults_pending": self.device_faults_pending,
            "started": list(self.started),
        }

    async def finish(self, final: str | None) -> dict[str, Any]:
        """End the faults still in effect and return this share's figures (summed by the coordinator)."""
        for f, e in list(self.live):
            self._end_device_fault(f, e)
        self._fault_numbers(final)
        for p in self.proxies:
            await p.close()
        f = self.fleet
        return {
            "faults": self.faults,
            "proxies": {p.name: vars(p.stats) for p in self.proxies},
            "status_counts": dict(f.status_counts),
            "error_kinds": dict(f.error_kinds),
            "heartbeats": f.heartbeats,
            "ever_ran_candidate": len(f.ran(self.sc.candidate.version)),
            "final_versions": {
                v: f.count_on(v) for v in (self.sc.baseline.version, self.sc.candidate.version)
            },
            "without_version": f.count_on(None),
            "windows_sent": f.windows_sent,
            "uploads": dict(f.telemetry_counts),
        }

    # --- faults on the devices themselves --------------------------------------------------------

    def _applies(self, f: Fault, d: Any) -> bool:
        return f.region in (None, self.regions[self.region_of[d.index]]) and f.device_class in (
            None,
            d.device_class,
        )

    def _live(self, kind: str, d: Any) -> list[tuple[Fault, dict[str, Any]]]:
        return [(f, e) for f, e in self.live if f.kind == kind and self._applies(f, d)]

    def _device_hooks(self, fleet: Fleet) -> None:
        sc = self.sc
        kinds = {f.kind for f in sc.faults}
        if "crash_loop" in kinds:

            def crash(d: Any, version: str) -> bool:
                hit = self._live("crash_loop", d) if version == sc.candidate.version else []
                for _, e in hit:
                    e["_ids"].add(d.device_id)
                return bool(hit)

            fleet.crash_loop = crash
        if "offline_mid_update" in kinds:

            def vanish(d: Any) -> float:
                for f, e in self._live("offline_mid_update", d):
                    if d.device_id not in e["_ids"]:  # once per fault and device
                        e["_ids"][d.device_id] = d.beats
                        return f.offline_s
                return 0.0

            fleet.vanish = vanish
        if sc.telemetry_every_s:
            from edgefleet.examples import digits

            assert self.repo_dir is not None and self.work is not None
            versions = (sc.baseline.version, sc.candidate.version)
            self.maker = WindowMaker(
                self.repo_dir,
                {v: self.work / f"model-{v}.onnx" for v in versions},
                digits(seed=0).x_train,  # the population the bundles' reference describes
                rows=sc.telemetry_rows,
            )

            def windows(d: Any, end: float, length_s: float) -> list[dict[str, Any]]:
                drift = self._live("drift", d)
                shift = (drift[0][0].shift, drift[0][0].strength) if drift else None
                if drift:
                    drift[0][1]["_ids"].add(d.device_id)
                    drift[0][1]["windows_shifted"] += 1
                w = self.maker.window(
                    d.version,
                    d.device_class,
                    end=end,
                    length_s=length_s,
                    seed=seed_of(self.seed, d.index, d.beats),
                    shift=shift,
                )
                return [w]

            fleet.telemetry_every_s = sc.telemetry_every_s
            fleet.windows_for = windows

    async def _device_fault(self, i: int, f: Fault) -> None:
        await asyncio.sleep(max(0.0, self.t0 + f.at_s - time.monotonic()))
        targets = [d for d in self.fleet.devices if self._applies(f, d)]
        entry: dict[str, Any] = {
            "_i": i,
            "kind": f.kind,
            "region": f.region or "all",
            "at_s": round(time.monotonic() - self.t0, 2),
            "for_s": f.for_s or None,
            "devices": len(targets),
            "_ids": {} if f.kind == "offline_mid_update" else set(),
            "_beats": {d.device_id: (d.beats, d.errors) for d in targets},
        }
        if f.device_class:
            entry["device_class"] = f.device_class
        if f.kind == "drift":
            entry.update(shift=f.shift, strength=f.strength, windows_shifted=0)
        if f.kind == "clock_skew":
            entry["skew_s"] = f.skew_s
            for d in targets:
                d.skew_s = f.skew_s
        self.faults.append(entry)
        self.started.append(f"{f.kind}@{f.region or 'all'}")
        self.live.append((f, entry))
        if not f.for_s:
            self.device_faults_pending -= 1
            return  # in effect until the end of the run
        await asyncio.sleep(f.for_s)
        self._end_device_fault(f, entry)
        self.device_faults_pending -= 1  # the run lasts at least until the fault is over

    def _end_device_fault(self, f: Fault, entry: dict[str, Any]) -> None:
        if (f, entry) not in self.live:
            return
        self.live.remove((f, entry))
        entry["ended_s"] = round(time.monotonic() - self.t0, 2)
        if f.kind == "clock_skew":
            for d in self.fleet.devices:
                if d.device_id in entry["_beats"]:
                    d.skew_s = 0.0

    def _fault_numbers(self, final: str | None) -> None:
        """What each device fault did to this share's devices (the coordinator adds the shares up)."""
        by_id = self.fleet.by_id
        for e in self.faults:
            if e["kind"] not in DEVICE_FAULTS or "_ids" not in e:
                continue
            ids, beats = e.pop("_ids"), e.pop("_beats")
            if e["kind"] == "crash_loop":
                hit = [by_id[i] for i in ids]
                e.update(
                    crashed=len(hit),
                    restarts=sum(d.restarts for d in hit),
                    rolled_themselves_back=sum(1 for d in hit if d.version != self.sc.candidate.version),
                )
            elif e["kind"] == "clock_skew":
                e.update(
                    heartbeats_answered=sum(by_id[i].beats - b for i, (b, _) in beats.items()),
                    errors=sum(by_id[i].errors - n for i, (_, n) in beats.items()),
                    ended_on_final=sum(1 for i in beats if final is not None and by_id[i].version == final),
                )
            elif e["kind"] == "offline_mid_update":
                e.update(
                    vanished=len(ids),
                    came_back=sum(1 for i, b in ids.items() if by_id[i].beats > b),
                    ended_on_final=sum(1 for i in ids if final is not None and by_id[i].version == final),
                )
            elif e["kind"] == "drift":
                e["devices_drifting"] = len(ids)

    # --- network faults on this share's proxies, and herd nudges --------------------------------

    async def _net_faults(self) -> None:
        await asyncio.gather(*(self._fault(i, f) for i, f in self.net))
        self.faults_done = True

    async def _fault(self, i: int, f: Fault) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.t0 + f.at_s - time.monotonic()))
        entry: dict[str, Any] = {"_i": i, "kind": f.kind, "region": f.region or "all"}
        entry["at_s"] = round(time.monotonic() - self.t0, 2)
        self.started.append(f"{f.kind}@{f.region or 'all'}")
        if f.kind == "herd":
            # as a broadcast nudge asking to poll within spread_s reaches the devices (the agent's rule)
            from edgefleet.agent._nudge import nudge_delay
            from edgefleet.server._notify import nudge_payload

            rng = random.Random(self.seed + self.worker)
            for d in self.fleet.devices:
                if d.nudge is not None:
                    loop.call_later(nudge_delay(nudge_payload(f.spread_s), rng), d.nudge.set)
            entry["nudged"] = len(self.fleet.devices)
            entry["spread_s"] = f.spread_s
            self.faults.append(entry)
            return
        targets = [p for p in self.proxies if f.region in (None, p.name)]
        before = {p.name: p.stats.by_fault.get(f.kind, 0) for p in targets}
        stalled = {p.name: p.stats.stalled for p in targets}
        for p in targets:
            if f.kind == "partition":
                p.partition(True)
            elif f.kind == "latency":
                p.state.latency_s = f.latency_ms / 1000
            elif f.kind == "loss":
                p.state.loss = f.loss
        on_before = {v: self.fleet.count_on(v) for v in (self.sc.baseline.version, self.sc.candidate.version)}
        await asyncio.sleep(f.for_s)
        for p in targets:  # undo this fault only (another may still be in effect on the same proxy)
            if f.kind == "partition":
                p.partition(False)
            elif f.kind == "latency":
                p.state.latency_s = 0.0
            elif f.kind == "loss":
                p.state.loss = 0.0
        entry.update(
            for_s=f.for_s,
            via="fault-injecting proxy",
            connections_reset=sum(p.stats.by_fault.get(f.kind, 0) - before[p.name] for p in targets),
            devices_on_before=on_before,
            devices_on_after={v: self.fleet.count_on(v) for v in on_before},
        )
        if f.kind == "loss":
            entry["chunks_stalled"] = sum(p.stats.stalled - stalled[p.name] for p in targets)
        self.faults.append(entry)


# --- worker processes ------------------------------------------------------------------------------


def _worker_main(conn: Any, kwargs: dict[str, Any], netns: str | None) -> None:
    """A worker process: one :class:`_Side`, driven by the coordinator's commands over ``conn``."""
    if netns:
        from edgefleet.sim._netns import enter_netns

        enter_netns(netns)  # before any socket or thread: everything below lives in the namespace
    kwargs = {**kwargs, "sc": SimScenario.model_validate(kwargs["sc"])}
    with contextlib.suppress(EOFError, BrokenPipeError, KeyboardInterrupt):  # the coordinator is gone
        asyncio.run(_worker_async(conn, _Side(**kwargs)))


async def _worker_async(conn: Any, side: _Side) -> None:
    loop = asyncio.get_running_loop()

    def recv() -> Any:
        return loop.run_in_executor(None, conn.recv)

    run: asyncio.Task | None = None
    while True:
        cmd, *args = await recv()
        try:
            if cmd == "setup":
                await side.setup(*args)
                conn.send(("ok", None))
            elif cmd == "baseline":
                await side.baseline()
                conn.send(("ok", None))
            elif cmd == "run":
                run = asyncio.create_task(side.run(*args))
                asyncio.create_task(_push_snapshots(conn, side, run))
            elif cmd == "stop":
                side.stop()
                if run is not None:
                    await run
                conn.send(("ok", await side.finish(*args)))
                return
        except Exception as e:  # noqa: BLE001 - the coordinator reports it
            import traceback

            conn.send(("error", f"worker {side.worker}: {type(e).__name__}: {e}\n{traceback.format_exc()}"))
            return


async def _push_snapshots(conn: Any, side: _Side, run: asyncio.Task) -> None:
    while not run.done():
        conn.send(("snap", side.snapshot()))
        await asyncio.sleep(0.2)


class _LocalShare:
    """A :class:`_Side` in the coordinator's own event loop."""

    def __init__(self, side: _Side) -> None:
        self.side, self.worker, self.netns = side, side.worker, None
        self._run: asyncio.Task | None = None

    @property
    def snap(self) -> dict[str, Any] | None:
        return self.side.snapshot() if self._run is not None else None

    async def call(self, cmd: str, *args: Any) -> Any:
        if cmd == "setup":
            return await self.side.setup(*args)
        if cmd == "baseline":
            return await self.side.baseline()
        if cmd == "run":
            self._run = asyncio.create_task(self.side.run(*args))
            return None
        self.side.stop()  # "stop"
        if self._run is not None:
            await self._run
        return await self.side.finish(*args)

    def close(self) -> None:
        pass


class _ProcShare:
    """A :class:`_Side` in a worker process (started with ``spawn``; in a network namespace when
    ``netns`` names one), its snapshots read by a thread."""

    def __init__(self, kwargs: dict[str, Any], netns: str | None = None) -> None:
        import multiprocessing as mp
        import threading

        self.worker, self.netns, self.devices = kwargs["worker"], netns, len(kwargs["indices"])
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        kw = {**kwargs, "sc": kwargs["sc"].model_dump(mode="json")}
        self.proc = ctx.Process(
            target=_worker_main, args=(child, kw, netns), name=f"edgefleet-sim-{self.worker}"
        )
        self.proc.daemon = True
        self.proc.start()
        child.close()
        self.snap: dict[str, Any] | None = None
        self.loop = asyncio.get_running_loop()
        self.replies: asyncio.Queue = asyncio.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                msg = ("error", f"worker {self.worker} exited with code {self.proc.exitcode}")
                self.loop.call_soon_threadsafe(self.replies.put_nowait, msg)
                return
            if msg[0] == "snap":
                self.snap = msg[1]
            else:
                self.loop.call_soon_threadsafe(self.replies.put_nowait, msg)

    async def call(self, cmd: str, *args: Any) -> Any:
        self.conn.send((cmd, *args))
        if cmd == "run":
            return None
        kind, value = await self.replies.get()
        if kind == "error":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        self.conn.close()


# --- the coordinator -------------------------------------------------------------------------------


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two shares' figures for one fault (or one proxy) added up."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif k == "at_s":
            out[k] = min(out[k], v)
        elif k == "ended_s":
            out[k] = max(out[k], v)
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _merge(out[k], v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _SETTINGS:
            out[k] = out[k] + v
    return out


_SETTINGS = ("for_s", "skew_s", "spread_s", "strength", "_i")  # the fault's own figures: not added up


class _Run:
    def __init__(
        self,
        sc: SimScenario,
        url: str,
        admin_token: str,
        *,
        seed: int,
        on_sample: Callable | None,
        device_urls: list[str] | None = None,
        kill: Callable[[], Any] | None = None,
        repo_dir: Path | None = None,
        work: Path | None = None,
        workers: int = 1,
        netns: Any = None,
        netns_region: str | None = None,
        partition_note: str = "",
    ):
        self.sc, self.url, self.token, self.seed, self.on_sample = sc, url, admin_token, seed, on_sample
        self.targets = [(httpx.URL(u).host, httpx.URL(u).port) for u in (device_urls or [url])]
        self.kill = kill
        self.regions = list(sc.regions)
        self.samples: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.rollout: dict[str, Any] = {}
        self.t0 = 0.0
        self.repo_dir, self.work = repo_dir, work
        self.alerts: list[dict[str, Any]] = []
        self.workers = max(1, workers)
        self.netns, self.netns_region, self.partition_note = netns, netns_region, partition_note
        # Faults only the coordinator can do: kill -9 of a server, a namespace's link down.
        self.own = [
            i for i, f in enumerate(sc.faults)
            if f.kind == "kill_server" or (f.kind == "partition" and netns is not None and f.region == netns_region)
        ]  # fmt: skip
        self.own_done = not self.own
        self.shares: list[Any] = []
        self.setup: dict[str, Any] = {}

    def _plan(self) -> list[tuple[dict[str, Any], str | None]]:
        """Which devices each share simulates, and in which namespace."""
        sc = self.sc
        shares = list(sc.regions.values())
        every = list(range(sc.devices))
        plan: list[tuple[dict[str, Any], str | None]] = []
        common = dict(
            sc=sc, server_url=self.url, admin_token=self.token, seed=self.seed,
            repo_dir=str(self.repo_dir) if self.repo_dir else None, work=str(self.work) if self.work else None,
            skip_faults=tuple(self.own),
        )  # fmt: skip
        if self.netns is not None:
            k = self.regions.index(self.netns_region)
            inside = [i for i in every if _share_index(shares, i, sc.devices) == k]
            every = [i for i in every if _share_index(shares, i, sc.devices) != k]
            port = self.targets[0][1]
            plan.append(
                ({**common, "indices": inside, "targets": [(self.netns.peer_addr, port)], "direct": True,
                  "worker": 0}, self.netns.name)
            )  # fmt: skip
        n = self.workers
        for w in range(n):
            mine = every[w::n]
            if mine:
                plan.append(({**common, "indices": mine, "targets": self.targets, "worker": len(plan)}, None))
        return plan

    async def go(self) -> dict[str, Any]:
        sc = self.sc
        api = Client(self.url, token=self.token, timeout=30)
        base = await asyncio.to_thread(api.register_release, "digits", sc.baseline.version)
        await asyncio.to_thread(api.register_release, "digits", sc.candidate.version)
        by_class = {
            v["variant"]: {k: v[k] for k in ("variant", "target_path", "sha256")} for v in base["variants"]
        }
        self.plan = self._plan()
        try:
            for kwargs, ns in self.plan:  # one worker count of 1: the devices share this event loop
                local = ns is None and self.workers == 1
                self.shares.append(_LocalShare(_Side(**kwargs)) if local else _ProcShare(kwargs, ns))
            await asyncio.gather(*(s.call("setup", by_class) for s in self.shares))
            await asyncio.gather(*(s.call("baseline") for s in self.shares))
            r = await asyncio.to_thread(
                api.create_rollout, "digits", sc.candidate.version, soak_s=sc.soak_s, gates=sc.gates or None
            )
            self.rid, self.first_wave = r["id"], r["members"]["admitted"]
            self.t0 = time.monotonic()
            t0_wall = time.time()
            for s in self.shares:
                await s.call("run", t0_wall)
            async with httpx.AsyncClient(base_url=self.url, timeout=10) as metrics_client:
                tasks = [
                    asyncio.create_task(self._own_faults()),
                    asyncio.create_task(self._sample(api, metrics_client)),
                ]
                met = False
                deadline = self.t0 + sc.timeout_s
                while time.monotonic() < deadline:
                    if self._done():
                        met = True
                        break
                    await asyncio.sleep(0.2)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._sample_once(api, metrics_client)
                parts = await asyncio.gather(*(s.call("stop", self._final_version()) for s in self.shares))
                await self._sample_once(api, metrics_client)
                if sc.telemetry_every_s:
                    await self._read_alerts(metrics_client)
        finally:
            for s in self.shares:
                s.close()
        audit = await asyncio.to_thread(api.rollout_audit, self.rid)
        return self._result(met, audit, parts)

    def _final_version(self) -> str | None:
        state = self.rollout.get("state")
        if state == "completed":
            return self.sc.candidate.version
        if state in ("rolled_back", "aborted"):
            return self.sc.baseline.version
        return None

    def _snaps(self) -> list[dict[str, Any]] | None:
        snaps = [s.snap for s in self.shares]
        return None if any(x is None for x in snaps) else snaps

    def _count_on(self, version: str) -> int:
        return sum(s["versions"].get(version, 0) for s in self._snaps() or [])

    def _heartbeats(self) -> int:
        return sum(s["heartbeats"] for s in self._snaps() or [])

    def _done(self) -> bool:
        snaps = self._snaps()
        want = self._final_version()
        return (
            snaps is not None
            and self.own_done
            and all(s["faults_done"] and not s["device_faults_pending"] for s in snaps)
            and want is not None
            and self._count_on(want) == self.sc.devices
        )

    # --- the coordinator's own faults --------------------------------------------------------------

    async def _own_faults(self) -> None:
        await asyncio.gather(*(self._own_fault(i, self.sc.faults[i]) for i in self.own))
        self.own_done = True

    async def _own_fault(self, i: int, f: Fault) -> None:
        await asyncio.sleep(max(0.0, self.t0 + f.at_s - time.monotonic()))
        entry: dict[str, Any] = {"_i": i, "kind": f.kind, "region": f.region or "all"}
        entry["at_s"] = round(time.monotonic() - self.t0, 2)
        versions = (self.sc.baseline.version, self.sc.candidate.version)
        if f.kind == "kill_server":
            pid = self.kill() if self.kill else None
            entry.update(killed_pid=pid, heartbeats_before=self._heartbeats())
            await asyncio.sleep(f.for_s)
            entry["heartbeats_after"] = self._heartbeats()  # answered by the replica
        else:  # partition of the region in the namespace: its link really goes down
            inside = next(s for s in self.shares if s.netns)
            on_before = {v: self._count_on(v) for v in versions}
            await asyncio.to_thread(self.netns.partition)
            beats = (inside.snap or {}).get("heartbeats", 0)
            try:
                await asyncio.sleep(f.for_s)
                answered = (inside.snap or {}).get("heartbeats", 0) - beats
            finally:
                await asyncio.to_thread(self.netns.heal)
            entry.update(
                for_s=f.for_s,
                via=f"ip netns: veth link {self.netns.host_if} down (namespace {self.netns.name})",
                devices=len(inside.side.indices) if isinstance(inside, _LocalShare) else inside.devices,
                heartbeats_answered_while_cut=answered,
                devices_on_before=on_before,
                devices_on_after={v: self._count_on(v) for v in versions},
            )
        self.faults.append(entry)

    async def _read_alerts(self, mc: httpx.AsyncClient) -> None:
        """Have the control plane evaluate its alert rules now (as its scheduler does every minute) and
        read the open alerts."""
        h = {"Authorization": f"Bearer {self.token}"}
        r = await mc.post("/v1/fleet/alerts/evaluate", headers=h, timeout=60)
        r.raise_for_status()
        r = await mc.get("/v1/fleet/alerts", params={"state": "open"}, headers=h, timeout=60)
        r.raise_for_status()
        self.alerts = [
            {k: a.get(k) for k in ("rule", "severity", "subject", "value", "threshold", "message")}
            for a in r.json()
        ]

    async def _sample(self, api: Client, mc: httpx.AsyncClient) -> None:
        every = max(0.5, self.sc.poll_interval_s / 30)  # 0.5 s for scaled-down time, 2 s at a 60 s heartbeat
        while True:
            await self._sample_once(api, mc)
            await asyncio.sleep(every)

    async def _sample_once(self, api: Client, mc: httpx.AsyncClient) -> None:
        with contextlib.suppress(Exception):
            self.rollout = await asyncio.to_thread(api.rollout, self.rid)
        buckets: dict[float, float] = {}
        cpu_s = None
        with contextlib.suppress(Exception):
            # only the two families read here: the fleet gauges would make the server read every
            # device row on each sample (at 10,000 devices that starved its heartbeats)
            text = (
                await mc.get(
                    "/metrics",
                    params={"name[]": [f"{HEARTBEAT_HISTOGRAM}_bucket", "process_cpu_seconds_total"]},
                    headers={"Authorization": f"Bearer {self.token}"},
                )
            ).text
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name.endswith("_bucket") and s.labels.get("route") == HEARTBEAT_ROUTE:
                        le = float(s.labels["le"])
                        buckets[le] = buckets.get(le, 0.0) + s.value
                    elif s.name == "process_cpu_seconds_total":
                        cpu_s = s.value  # the server process's CPU (its own /metrics)
        snaps = self._snaps() or []
        versions = (self.sc.baseline.version, self.sc.candidate.version)
        s = {
            "t": round(time.monotonic() - self.t0, 2),
            "versions": {v: self._count_on(v) for v in versions},
            "heartbeats": sum(x["heartbeats"] for x in snaps),
            "errors": sum(x["errors"] for x in snaps),
            "state": self.rollout.get("state"),
            "wave": self.rollout.get("wave"),
            "server_cpu_s": cpu_s,
            "buckets": buckets,
        }
        self.samples.append(s)
        if self.on_sample is not None:
            started = sorted({x for sn in snaps for x in sn["started"]})
            started += [f"{e['kind']}@{e['region']}" for e in self.faults]
            self.live_faults = [{"kind": k.split("@")[0], "region": k.split("@")[1]} for k in started]
            self.on_sample(s, self)

    # --- the result --------------------------------------------------------------------------------

    def _describe(self, e: dict[str, Any]) -> None:
        """The ``did`` line of a device fault, from the shares' figures added up."""
        sc, final = self.sc, self._final_version()
        where = f"{e['devices']} devices" + (f" in {e['region']}" if e["region"] != "all" else "")
        where += f" of class {e['device_class']}" if "device_class" in e else ""
        if e["kind"] == "crash_loop":
            e["did"] = (
                f"{e['crashed']} of {where} activated {sc.candidate.version} and crashed on start; "
                f"{e['restarts']} agent restarts in all, {e['rolled_themselves_back']} devices rolled "
                f"themselves back; the rollout ended {self.rollout.get('state')}"
            )
        elif e["kind"] == "clock_skew":
            e["did"] = (
                f"{where} ran {e['skew_s']:+.0f} s off; {e['heartbeats_answered']} of their heartbeats "
                f"answered, {e['errors']} failed; {e['ended_on_final']}/{e['devices']} ended on {final}"
            )
        elif e["kind"] == "offline_mid_update":
            f = self.sc.faults[e["_i"]]
            e["did"] = (
                f"{e['vanished']} of {where} vanished mid-download for {f.offline_s:g} s; "
                f"{e['came_back']} came back and resumed, {e['ended_on_final']} ended on {final}"
            )
        elif e["kind"] == "drift":
            regions = sorted({a["subject"].get("region") for a in self.alerts if a["rule"] == "drift"})
            e["drift_alert_regions"] = regions
            e["did"] = (
                f"{e['windows_shifted']} telemetry windows from {e['devices_drifting']} of {where} carried "
                f"{e['shift']}-shifted inputs (strength {e['strength']:g}); drift alerts open for "
                f"regions: {', '.join(map(str, regions)) or 'none'}"
            )

    def _result(self, met: bool, audit: list[dict[str, Any]], parts: list[dict[str, Any]]) -> dict[str, Any]:
        sc = self.sc
        by_fault: dict[int, dict[str, Any]] = {e["_i"]: e for e in self.faults}
        proxies: dict[str, dict[str, Any]] = {}
        total: dict[str, Any] = {}
        for p in parts:
            for e in p["faults"]:
                by_fault[e["_i"]] = _merge(by_fault[e["_i"]], e) if e["_i"] in by_fault else e
            for name, st in p["proxies"].items():
                proxies[name] = _merge(proxies.get(name, {}), st)
            total = _merge(total, {k: v for k, v in p.items() if k not in ("faults", "proxies")})
        faults = [by_fault[i] for i in sorted(by_fault, key=lambda i: by_fault[i]["at_s"])]
        for e in faults:
            if e["kind"] in DEVICE_FAULTS:
                self._describe(e)
            e.pop("_i", None)
        ran_bad = total.get("ever_ran_candidate", 0)
        ev = self.rollout.get("evaluation") or {}
        waves = [
            {"at": a.get("at") or a.get("created_at"), "action": a["action"], **(a.get("details") or {})}
            for a in audit
            if a["action"].startswith("rollout.")
        ]
        partitions = [f for f in sc.faults if f.kind == "partition"]
        return {
            "scenario": sc.name,
            "devices": sc.devices,
            "reached_end": met,
            "workers": [
                {
                    "worker": s.worker,
                    "devices": len(kw["indices"]),
                    "process": not isinstance(s, _LocalShare),
                    "netns": s.netns,
                }
                for s, (kw, _) in zip(self.shares, self.plan, strict=False)
            ],  # fmt: skip
            "partitions_via": (
                None
                if not partitions
                else ("ip netns" if self.netns is not None else "fault-injecting proxy")
            ),  # fmt: skip
            "partitions_note": self.partition_note if partitions else "",
            "rollout": {
                "id": self.rid,
                "state": self.rollout.get("state"),
                "first_wave": self.first_wave,
                "failed_gates": ev.get("failed_gates"),
                "members": self.rollout.get("members"),
                "members_total": sum((self.rollout.get("members") or {}).values()),
                "events": waves,
            },
            "ever_ran_candidate": ran_bad,
            "ever_ran_candidate_share": round(ran_bad / sc.devices, 4),
            "final_versions": total.get("final_versions", {}),
            "without_version": total.get("without_version", 0),
            "status_counts": total.get("status_counts", {}),
            "error_kinds": total.get("error_kinds", {}),
            "heartbeats": total.get("heartbeats", 0),
            "telemetry": {
                "every_s": sc.telemetry_every_s,
                "windows_sent": total.get("windows_sent", 0),
                "uploads": total.get("uploads", {}),
            },
            "alerts": self.alerts,
            "drift_alert_regions": sorted(
                {str(a["subject"].get("region")) for a in self.alerts if a["rule"] == "drift"}
            ),
            "faults": faults,
            "proxies": proxies,
            "samples": self.samples,
            "seconds": round(time.monotonic() - self.t0, 2),
            "setup": self.setup,
            "overall": overall(self.samples),
        }


def run_scenario(
    sc: SimScenario,
    *,
    work: Path | None = None,
    database_url: str | None = None,
    seed: int = 0,
    on_sample: Callable[[dict[str, Any], Any], None] | None = None,
    server_process: bool = False,
    server_jobs_process: bool = True,
    workers: int | None = None,
    partitions: str = "auto",
) -> dict[str, Any]:
    """Run ``sc`` against a control plane started here (SQLite in ``work``, or ``database_url``).

    Returns the result (see :func:`edgefleet.sim._simreport.check`); ``work`` keeps the repository
    between runs (training is skipped when it exists). ``server_process`` runs the server as its own
    ``uvicorn`` process as ``edgefleet server run`` does (else a thread of this one, sharing its
    interpreter with the devices): by default with its periodic jobs in a process of their own,
    with ``server_jobs_process=False`` in a thread of the request process (``--jobs-in-process``).
    ``workers``: processes the devices are spread over (default: the scenario's ``workers``, else
    :func:`default_workers`); 1 keeps them in this process's event loop. ``partitions``: ``auto`` puts a
    partitioned region's devices in a network namespace joined by a veth pair, and its partition sets the
    link down, where ``ip netns`` works here (root, iproute2), else the fault-injecting proxy cuts it;
    ``netns`` insists on the namespace, ``proxy`` on the proxy.
    """
    from edgefleet.server import ServerConfig, start_server, start_server_process

    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgefleet-sim-")
        work = Path(tmp.name)
    try:
        versions = [sc.baseline.version, sc.candidate.version]
        repo = build_repository(work, versions, [c.name for c in sc.classes], seed=seed)
        server_dir = Path(tempfile.mkdtemp(prefix="server-", dir=work))
        cfg = ServerConfig(
            data_dir=server_dir,
            repo_dir=repo,
            keys_dir=server_dir / "nokeys",
            # fast ticks for scaled-down time; the server's own 1 s at a real heartbeat interval (each tick
            # admits devices and evaluates every live rollout's gates in a write transaction)
            engine_tick_s=min(1.0, max(0.2, sc.poll_interval_s / 10)),
            poll_interval_s=sc.poll_interval_s,
            db_url=database_url,
        )
        if any(f.kind == "kill_server" for f in sc.faults):
            return _with_replicas(sc, cfg, seed=seed, on_sample=on_sample, repo=repo, work=work)
        n = workers or sc.workers or default_workers(sc.devices)
        start = (
            functools.partial(start_server_process, jobs_process=server_jobs_process)
            if server_process
            else start_server
        )
        db = str(cfg.database_url or "").split(":", 1)[0].split("+", 1)[0] or "sqlite"
        region, note = _netns_plan(sc, partitions)
        with contextlib.ExitStack() as stack:
            host = None
            if region is not None:
                from edgefleet.sim._netns import PREFIX, netns_host, remove_stale

                remove_stale()
                host = stack.enter_context(netns_host(PREFIX))
                note = (
                    f"region {region}'s devices ran in network namespace {host.name} ({host.addr}), joined to the "
                    f"server ({host.peer_addr}) by a veth pair; its partition set {host.host_if} down"
                )
            # With a namespace the server listens on the veth's host side, which this side reaches too.
            # a loaded machine can take a while to migrate a fresh PostgreSQL schema: wait up to 3 minutes
            srv = stack.enter_context(start(cfg, host=host.peer_addr if host else "127.0.0.1", timeout=180))
            run = _Run(
                sc,
                srv.url,
                srv.admin_token,
                seed=seed,
                on_sample=on_sample,
                repo_dir=repo,
                work=work,
                workers=n,
                netns=host,
                netns_region=region,
                partition_note=note,
            )
            where = "thread of this process"
            if server_process:
                where = "uvicorn process and a jobs process" if server_jobs_process else "uvicorn process"
            run.setup = _setup(db, where, n)
            return asyncio.run(run.go())
    finally:
        if tmp is not None:
            tmp.cleanup()


def _netns_plan(sc: SimScenario, partitions: str) -> tuple[str | None, str]:
    """The region to put in a network namespace (None: none), and why not when there is none."""
    from edgefleet.errors import ConfigError
    from edgefleet.sim._netns import why_no_netns

    parts = [f.region for f in sc.faults if f.kind == "partition"]
    if partitions == "proxy" or not parts:
        return None, "--partitions proxy" if parts else ""
    net = [f for f in sc.faults if f.kind in ("partition", "latency", "loss")]
    # a region whose network faults are all its own partitions (latency and loss stay the proxy's: no netem)
    fit = [
        r for r in dict.fromkeys(parts)
        if r is not None and all(f.kind == "partition" and f.region == r for f in net if f.region in (None, r))
    ]  # fmt: skip
    why = why_no_netns()
    if not fit:
        why = "no region whose only network faults are its partitions (latency and loss need the proxy)"
    if why is None:
        return fit[0], ""
    if partitions == "netns":
        raise ConfigError(f"cannot partition with a network namespace: {why}", hint="use --partitions auto")
    return None, f"no network namespace: {why}"


def _setup(db: str, server: str, workers: int) -> dict[str, Any]:
    return {
        "database": db,
        "server": server,
        "device_workers": workers,
        "protocol": "real enrollment tokens and device tokens, real HTTP/1.1 (keep-alive, no TLS) through "
        "each region's proxy, every heartbeat authenticated and written to the database by the server",
        "downloads": "none (an install takes install_delay_s)",
    }


DEVICES_PER_WORKER = 2500  # one event loop holds this many at a 60 s heartbeat with CPU to spare


def default_workers(devices: int) -> int:
    """Worker processes for a fleet: one per ``DEVICES_PER_WORKER`` devices, at most one per core."""
    return max(1, min(os.cpu_count() or 1, -(-devices // DEVICES_PER_WORKER)))


def _with_replicas(
    sc: SimScenario, cfg: Any, *, seed: int, on_sample: Callable | None, repo: Path, work: Path
) -> dict[str, Any]:
    """Two server processes on one PostgreSQL database; devices reach the first through their region's
    proxy (falling back to the second), the run's ``kill_server`` fault kills the first with SIGKILL."""
    from edgefleet.errors import ConfigError
    from edgefleet.server import start_server_process

    if not str(cfg.database_url or "").startswith("postgresql"):
        raise ConfigError(
            f"scenario {sc.name} kills a server: it needs two replicas on one PostgreSQL database",
            hint="give --db postgresql+psycopg://user@host/db",
        )
    with start_server_process(cfg) as primary, start_server_process(cfg) as replica:

        def kill() -> int:
            return primary.kill()  # SIGKILL to all its processes: no shutdown, connections reset mid-request

        run = _Run(
            sc,
            replica.url,
            replica.admin_token,
            seed=seed,
            on_sample=on_sample,
            device_urls=[primary.url, replica.url],
            kill=kill,
            repo_dir=repo,
            work=work,
        )
        run.setup = _setup(
            "postgresql", "two servers, each a uvicorn process and a jobs process (the first killed)", 1
        )
        return asyncio.run(run.go())
