"""``edgefleet sim``: run a scenario — a real control plane, a simulated fleet behind fault-injecting
proxies (one per region), a gated rollout of the scenario's candidate — and check its expected outcome.

The devices are :class:`edgefleet.sim.Fleet` devices: each enrolls with its own token, heartbeats the real
protocol and follows the director's assignments and rollback commands; the health they report comes from
the release and their device class. They download no artifact (the install takes ``install_delay_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from edgefleet.sim._windows import WindowMaker, seed_of

__all__ = ["build_repository", "run_scenario"]

FINAL = ("completed", "rolled_back", "aborted")
# Faults that act on the simulated devices themselves; they run side by side (the network faults in turn).
DEVICE_FAULTS = ("crash_loop", "clock_skew", "offline_mid_update", "drift")
HEARTBEAT_ROUTE = "/v1/devices/{device_id}/heartbeat"


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
    ):
        self.sc, self.url, self.token, self.seed, self.on_sample = sc, url, admin_token, seed, on_sample
        self.targets = [(httpx.URL(u).host, httpx.URL(u).port) for u in (device_urls or [url])]
        self.kill = kill
        self.regions = list(sc.regions)
        self.samples: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.rollout: dict[str, Any] = {}
        self.t0 = 0.0
        self.faults_done = not [f for f in sc.faults if f.kind not in DEVICE_FAULTS]
        self.device_faults_pending = sum(1 for f in sc.faults if f.kind in DEVICE_FAULTS)
        self.live: list[tuple[Fault, dict[str, Any]]] = []  # device faults in effect, with their report entry
        self.repo_dir, self.work = repo_dir, work
        self.alerts: list[dict[str, Any]] = []

    async def go(self) -> dict[str, Any]:
        sc = self.sc
        (host, port), rest = self.targets[0], self.targets[1:]
        self.proxies = [
            await FaultProxy(host, port, name=r, seed=self.seed, fallbacks=rest).start() for r in self.regions
        ]
        region_of = [
            _share_index(list(sc.regions.values()), i, sc.devices) for i in range(sc.devices)
        ]  # fmt: skip
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
        fleet = Fleet(
            [p.url for p in self.proxies],
            scenario,
            size=sc.devices,
            admin_token=self.token,
            seed=self.seed,
            max_connections=min(256, max(8, sc.devices // 4)),
            route=lambda d: region_of[d.index],
        )
        self.fleet = fleet
        self.region_of = region_of
        self._device_hooks(fleet)
        rng = random.Random(self.seed)
        classes = {c.name: c for c in sc.classes}

        def hardware(d: Any) -> dict[str, Any]:
            c = classes[d.device_class]
            return {"ram_mb": rng.randint(*c.ram_mb), "cores": rng.randint(*c.cores), "arch": c.arch}

        await fleet.enroll(
            tags_for=lambda d: {"region": self.regions[region_of[d.index]]}, hardware_for=hardware
        )
        api = Client(self.url, token=self.token, timeout=30)
        base = await asyncio.to_thread(api.register_release, "digits", sc.baseline.version)
        await asyncio.to_thread(api.register_release, "digits", sc.candidate.version)
        by_class = {v["variant"]: v for v in base["variants"]}
        keys = ("variant", "target_path", "sha256")
        fleet.preinstall(
            lambda d: {
                "name": "digits",
                "version": sc.baseline.version,
                **{k: by_class[d.device_class][k] for k in keys},
            }
        )
        await fleet.run(timeout=3 * sc.poll_interval_s)  # the control group reports on the baseline
        r = await asyncio.to_thread(
            api.create_rollout, "digits", sc.candidate.version, soak_s=sc.soak_s, gates=sc.gates or None
        )
        self.rid, self.first_wave = r["id"], r["members"]["admitted"]
        self.t0 = time.monotonic()
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as metrics_client:
            tasks = [
                asyncio.create_task(self._faults()),
                asyncio.create_task(self._sample(api, metrics_client)),
                *(asyncio.create_task(self._device_fault(f)) for f in sc.faults if f.kind in DEVICE_FAULTS),
            ]
            met = await fleet.run(until=self._done, timeout=sc.timeout_s, check_every=0.2)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._sample_once(api, metrics_client)
            if sc.telemetry_every_s:
                await self._read_alerts(metrics_client)
        self._close_device_faults()
        audit = await asyncio.to_thread(api.rollout_audit, self.rid)
        for p in self.proxies:
            await p.close()
        return self._result(met, audit)

    def _final_version(self) -> str | None:
        state = self.rollout.get("state")
        if state == "completed":
            return self.sc.candidate.version
        if state in ("rolled_back", "aborted"):
            return self.sc.baseline.version
        return None

    def _done(self, f: Fleet) -> bool:
        want = self._final_version()
        return (
            self.faults_done
            and not self.device_faults_pending
            and want is not None
            and f.count_on(want) == self.sc.devices
        )

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

    async def _device_fault(self, f: Fault) -> None:
        await asyncio.sleep(max(0.0, self.t0 + f.at_s - time.monotonic()))
        targets = [d for d in self.fleet.devices if self._applies(f, d)]
        entry: dict[str, Any] = {
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

    def _close_device_faults(self) -> None:
        """End the faults still in effect and say, for each device fault, what it did."""
        for f, e in list(self.live):
            self._end_device_fault(f, e)
        by_id = self.fleet.by_id
        final = self._final_version()
        for e in self.faults:
            if e["kind"] not in DEVICE_FAULTS or "_ids" not in e:
                continue
            ids, beats = e.pop("_ids"), e.pop("_beats")
            where = f"{e['devices']} devices" + (f" in {e['region']}" if e["region"] != "all" else "")
            where += f" of class {e['device_class']}" if "device_class" in e else ""
            if e["kind"] == "crash_loop":
                hit = [by_id[i] for i in ids]
                e.update(
                    crashed=len(hit),
                    restarts=sum(d.restarts for d in hit),
                    rolled_themselves_back=sum(1 for d in hit if d.version != self.sc.candidate.version),
                )
                e["did"] = (
                    f"{e['crashed']} of {where} activated {self.sc.candidate.version} and crashed on start; "
                    f"{e['restarts']} agent restarts in all, {e['rolled_themselves_back']} devices rolled "
                    f"themselves back; the rollout ended {self.rollout.get('state')}"
                )
            elif e["kind"] == "clock_skew":
                answered = sum(by_id[i].beats - b for i, (b, _) in beats.items())
                errors = sum(by_id[i].errors - n for i, (_, n) in beats.items())
                on = sum(1 for i in beats if final is not None and by_id[i].version == final)
                e.update(heartbeats_answered=answered, errors=errors, ended_on_final=on)
                e["did"] = (
                    f"{where} ran {e['skew_s']:+.0f} s off; {answered} of their heartbeats answered, "
                    f"{errors} failed; {on}/{e['devices']} ended on {final}"
                )
            elif e["kind"] == "offline_mid_update":
                back = sum(1 for i, b in ids.items() if by_id[i].beats > b)
                on = sum(1 for i in ids if final is not None and by_id[i].version == final)
                e.update(vanished=len(ids), came_back=back, ended_on_final=on)
                e["did"] = (
                    f"{len(ids)} of {where} vanished mid-download for {self._fault_of(e).offline_s:g} s; "
                    f"{back} came back and resumed, {on} ended on {final}"
                )
            elif e["kind"] == "drift":
                regions = sorted({a["subject"].get("region") for a in self.alerts if a["rule"] == "drift"})
                e.update(devices_drifting=len(ids), drift_alert_regions=regions)
                e["did"] = (
                    f"{e['windows_shifted']} telemetry windows from {len(ids)} of {where} carried "
                    f"{e['shift']}-shifted inputs (strength {e['strength']:g}); drift alerts open for "
                    f"regions: {', '.join(map(str, regions)) or 'none'}"
                )

    def _fault_of(self, entry: dict[str, Any]) -> Fault:
        return next(
            f for f in self.sc.faults if f.kind == entry["kind"] and (f.region or "all") == entry["region"]
        )

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

    async def _faults(self) -> None:
        """The network and server faults, each on its own schedule (overlapping ones overlap)."""
        pending = sorted((f for f in self.sc.faults if f.kind not in DEVICE_FAULTS), key=lambda f: f.at_s)
        await asyncio.gather(*(self._fault(f) for f in pending))
        self.faults.sort(key=lambda e: e["at_s"])
        self.faults_done = True

    async def _fault(self, f: Fault) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.t0 + f.at_s - time.monotonic()))
        targets = [p for p in self.proxies if f.region in (None, p.name)]
        before = {p.name: p.stats.by_fault.get(f.kind, 0) for p in targets}
        entry: dict[str, Any] = {
            "kind": f.kind,
            "region": f.region or "all",
            "at_s": round(time.monotonic() - self.t0, 2),
        }
        if f.kind == "kill_server":
            pid = self.kill() if self.kill else None
            entry.update(killed_pid=pid, heartbeats_before=self.fleet.heartbeats)
            await asyncio.sleep(f.for_s)
            entry["heartbeats_after"] = self.fleet.heartbeats  # answered by the replica
            self.faults.append(entry)
            return
        if f.kind == "herd":
            rng = random.Random(self.seed)
            for d in self.fleet.devices:
                if d.nudge is not None:
                    loop.call_later(rng.uniform(0, f.spread_s), d.nudge.set)
            entry["nudged"] = len(self.fleet.devices)
            entry["spread_s"] = f.spread_s
            self.faults.append(entry)
            return
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
            connections_reset=sum(p.stats.by_fault.get(f.kind, 0) - before[p.name] for p in targets),
            devices_on_before=on_before,
            devices_on_after={v: self.fleet.count_on(v) for v in on_before},
        )
        self.faults.append(entry)

    async def _sample(self, api: Client, mc: httpx.AsyncClient) -> None:
        while True:
            await self._sample_once(api, mc)
            await asyncio.sleep(0.5)

    async def _sample_once(self, api: Client, mc: httpx.AsyncClient) -> None:
        with contextlib.suppress(Exception):
            self.rollout = await asyncio.to_thread(api.rollout, self.rid)
        buckets: dict[float, float] = {}
        with contextlib.suppress(Exception):
            text = (await mc.get("/metrics", headers={"Authorization": f"Bearer {self.token}"})).text
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name.endswith("_bucket") and s.labels.get("route") == HEARTBEAT_ROUTE:
                        le = float(s.labels["le"])
                        buckets[le] = buckets.get(le, 0.0) + s.value
        f = self.fleet
        s = {
            "t": round(time.monotonic() - self.t0, 2),
            "versions": {v: f.count_on(v) for v in (self.sc.baseline.version, self.sc.candidate.version)},
            "heartbeats": f.heartbeats,
            "errors": f.http_errors,
            "state": self.rollout.get("state"),
            "wave": self.rollout.get("wave"),
            "buckets": buckets,
        }
        self.samples.append(s)
        if self.on_sample is not None:
            self.on_sample(s, self)

    def _result(self, met: bool, audit: list[dict[str, Any]]) -> dict[str, Any]:
        sc, f = self.sc, self.fleet
        ran_bad = len(f.ran(sc.candidate.version))
        ev = self.rollout.get("evaluation") or {}
        waves = [
            {"at": a.get("at") or a.get("created_at"), "action": a["action"], **(a.get("details") or {})}
            for a in audit
            if a["action"].startswith("rollout.")
        ]
        return {
            "scenario": sc.name,
            "devices": sc.devices,
            "reached_end": met,
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
            "final_versions": {v: f.count_on(v) for v in (sc.baseline.version, sc.candidate.version)},
            "status_counts": dict(f.status_counts),
            "heartbeats": f.heartbeats,
            "telemetry": {
                "every_s": sc.telemetry_every_s,
                "windows_sent": f.windows_sent,
                "uploads": dict(f.telemetry_counts),
            },
            "alerts": self.alerts,
            "drift_alert_regions": sorted(
                {str(a["subject"].get("region")) for a in self.alerts if a["rule"] == "drift"}
            ),
            "faults": self.faults,
            "proxies": {p.name: vars(p.stats) for p in self.proxies},
            "samples": self.samples,
            "seconds": round(time.monotonic() - self.t0, 2),
        }


def run_scenario(
    sc: SimScenario,
    *,
    work: Path | None = None,
    database_url: str | None = None,
    seed: int = 0,
    on_sample: Callable[[dict[str, Any], Any], None] | None = None,
    server_process: bool = False,
) -> dict[str, Any]:
    """Run ``sc`` against a control plane started here (SQLite in ``work``, or ``database_url``).

    Returns the result (see :func:`edgefleet.sim._simreport.check`); ``work`` keeps the repository
    between runs (training is skipped when it exists). ``server_process`` runs the server as its own
    ``uvicorn`` process (else a thread of this one, sharing its interpreter with the devices).
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
            engine_tick_s=0.2,
            poll_interval_s=sc.poll_interval_s,
            db_url=database_url,
        )
        if any(f.kind == "kill_server" for f in sc.faults):
            return _with_replicas(sc, cfg, seed=seed, on_sample=on_sample, repo=repo, work=work)
        start = start_server_process if server_process else start_server
        with start(cfg) as srv:
            run = _Run(sc, srv.url, srv.admin_token, seed=seed, on_sample=on_sample, repo_dir=repo, work=work)
            return asyncio.run(run.go())
    finally:
        if tmp is not None:
            tmp.cleanup()


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
            primary.process.kill()  # SIGKILL: no shutdown, connections reset mid-request
            return primary.process.pid

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
        return asyncio.run(run.go())
