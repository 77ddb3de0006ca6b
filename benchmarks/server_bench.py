"""Control-plane benchmark: heartbeat throughput, containment of a bad release, time to 100%.

    .venv/bin/python benchmarks/server_bench.py            # full run (a few minutes)
    .venv/bin/python benchmarks/server_bench.py --quick    # smaller sizes

1. Heartbeats/s with p50/p99 latency on SQLite and PostgreSQL, with 1 and 2 server processes
   (real ``uvicorn`` subprocesses), driven by the load generator (``edgefleet.sim._loadgen``) in
   another process; also the server CPU time per heartbeat, which does not depend on how busy the
   shared machine is.
2. Containment: N simulated devices on 1.0.0, a bad 2.0.0 (error rate and confidence collapse) rolled
   out with the default waves: how many devices ever ran it, and the time from the gate failing to
   every device back on 1.0.0, by polling alone and with MQTT nudges.
3. A good release (1.1.0): time from creation to every device on it, default waves, soak scaled down.

Writes benchmarks/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from edgefleet.server import ServerConfig, start_server_process
from edgefleet.sim import Fleet, ReleaseBehavior, Scenario

console = Console()
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULTS = Path(__file__).parent / "results" / "server.json"


# --- helpers -----------------------------------------------------------------------------------


class PgSchema:
    """A throw-away schema in the test database, so the benchmark never touches anyone's tables."""

    def __init__(self) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.name = "ef_bench_" + secrets.token_hex(4)
        self.engine = sa.create_engine(PG, poolclass=sa.pool.NullPool)
        with self.engine.begin() as c:
            c.execute(sa.text(f"CREATE SCHEMA {self.name}"))
        self.url = f"{PG}?options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        with self.engine.begin() as c:
            c.execute(self.sa.text(f"DROP SCHEMA IF EXISTS {self.name} CASCADE"))


def start(n: int, base: Path, db_url: str | None, **cfg) -> list:
    procs = []
    for i in range(n):
        c = ServerConfig(data_dir=base / f"s{i}", db_url=db_url, keys_dir=base / "nokeys", **cfg)
        if db_url is None and i > 0:  # SQLite: every process opens the first one's database file
            c = c.model_copy(update={"db_url": f"sqlite:///{(base / 's0' / 'edgefleet.sqlite').resolve()}"})
        procs.append(start_server_process(c, log_file=base / f"s{i}.log"))
    return procs


def admin_token(base: Path) -> str:
    return (base / "s0" / "admin-token").read_text().strip()


def cpu_seconds(procs: list) -> float:
    return sum(sum(psutil.Process(p.process.pid).cpu_times()[:2]) for p in procs)


def build_repo(base: Path) -> Path:
    """A TUF repository with digits 1.0.0, 1.1.0 and 2.0.0 (real bundles of a real small model)."""
    from edgefleet.bundle import create_bundle
    from edgefleet.examples import digits, train_digits_mlp
    from edgefleet.registry import Repository, init_keys

    data = digits(seed=0)
    model = base / "digits.onnx"
    train_digits_mlp(model, data=data)
    repo = Repository.init(base / "repo", init_keys(base / "keys", root_keys=1, root_threshold=1))
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        out = create_bundle(
            model,
            base / f"{v}.tar",
            name="digits",
            version=v,
            variant="cpu",
            inputs_raw=data.x_test[:8],
            preprocess=[{"op": "scale", "factor": 1 / 16}],
        )
        repo.publish(out, delta=False)
    return base / "repo"


# --- 1. throughput -----------------------------------------------------------------------------


def throughput(db: str, devices: int, duration: float, concurrency: int, work: Path) -> list[dict]:
    schema = PgSchema() if db == "postgresql" else None
    rows = []
    try:
        base = work / f"tp-{db}"
        procs = start(1, base, schema.url if schema else None)
        try:
            fleet = Fleet(procs[0].url, Scenario(), size=devices, admin_token=admin_token(base))
            t0 = time.monotonic()
            asyncio.run(fleet.enroll())
            console.print(f"  {db}: enrolled {devices} devices in {time.monotonic() - t0:.1f}s")
            creds = [[d.device_id, d.token] for d in fleet.devices]
        finally:
            for p in procs:
                p.stop()
        for n in (1, 2):
            procs = start(n, base, schema.url if schema else None)
            try:
                spec = base / f"load-{n}.json"
                spec.write_text(
                    json.dumps(
                        {
                            "urls": [p.url for p in procs],
                            "devices": creds,
                            "concurrency": concurrency,
                            "duration_s": duration,
                            "warmup_s": 3,
                        }
                    )
                )
                c0 = cpu_seconds(procs)
                t0 = time.monotonic()
                r = subprocess.run(
                    [sys.executable, "-m", "edgefleet.sim._loadgen", str(spec)],
                    capture_output=True,
                    text=True,
                    timeout=duration + 120,
                )
                wall = time.monotonic() - t0
                c1 = cpu_seconds(procs)
                res = json.loads(r.stdout)
                # CPU spent over the whole run (warm-up included), per heartbeat sent in it
                sent = res["requests"] * wall / duration
                res.update(
                    db=db,
                    processes=n,
                    devices=devices,
                    concurrency=concurrency,
                    server_cpu_us_per_heartbeat=round((c1 - c0) / max(sent, 1) * 1e6, 1),
                )
                rows.append(res)
                console.print(
                    f"  {db} x{n}: {res['per_s']:.0f}/s  p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms"
                    f"  errors {res['errors']}  server CPU {res['server_cpu_us_per_heartbeat']} us/hb"
                )
            finally:
                for p in procs:
                    p.stop()
    finally:
        if schema:
            schema.drop()
    return rows


# --- 2 and 3. rollouts with a simulated fleet --------------------------------------------------


def _active(api: httpx.Client, version: str) -> dict:
    rel = api.post("/v1/releases", json={"name": "digits", "version": version})
    rel.raise_for_status()
    v = rel.json()["variants"][0]
    return {
        "name": "digits",
        "version": version,
        "variant": v["variant"],
        "target_path": v["target_path"],
        "sha256": v["sha256"],
    }


def containment(repo: Path, size: int, poll: float, mqtt: str | None, work: Path) -> dict:
    schema = PgSchema()
    base = work / f"contain-{'mqtt' if mqtt else 'poll'}"
    procs = start(1, base, schema.url, repo_dir=repo, poll_interval_s=poll, mqtt_url=mqtt)
    try:
        token = admin_token(base)
        api = httpx.Client(base_url=procs[0].url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        bad = ReleaseBehavior(error_rate=0.3, mean_confidence=0.45, latency_p95_ms=9.0)
        scenario = Scenario(poll_interval_s=poll, install_delay_s=1.0, behaviors={"2.0.0": bad})
        fleet = Fleet(
            procs[0].url, scenario, size=size, admin_token=token, mqtt_url=mqtt, max_connections=128
        )
        asyncio.run(fleet.enroll())
        fleet.preinstall(_active(api, "1.0.0"))
        _active(api, "2.0.0")
        gates = {"min_devices": 5, "min_requests": 200}
        state: dict = {}
        start_at = time.monotonic() + 2 * poll  # the control group reports on 1.0.0 first

        def step(f: Fleet) -> bool:
            if "rid" not in state:  # the rollout starts while every device is running (and subscribed)
                if time.monotonic() < start_at:
                    return False
                r = api.post(
                    "/v1/rollouts", json={"name": "digits", "version": "2.0.0", "soak_s": 60, "gates": gates}
                )
                r.raise_for_status()
                state.update(
                    rid=r.json()["id"], first_wave=r.json()["members"]["admitted"], created=time.time()
                )
                return False
            return (
                f.count_on("1.0.0") == size
                and api.get(f"/v1/rollouts/{state['rid']}").json()["state"] == "rolled_back"
            )

        ok = asyncio.run(fleet.run(until=step, timeout=40 * poll, check_every=0.25))
        rid, first_wave, created = state["rid"], state["first_wave"], state["created"]
        audit = api.get(f"/v1/rollouts/{rid}/audit").json()
        failed = next(a for a in audit if a["action"] == "rollout.gate_failed")
        last_back = max(t for t, _, old, new in fleet.switches if old == "2.0.0" and new == "1.0.0")
        return {
            "devices": size,
            "poll_interval_s": poll,
            "nudges": "mqtt" if mqtt else "none (polling)",
            "contained": ok,
            "first_wave": first_wave,
            "gate_min_devices": gates["min_devices"],
            "ever_ran_bad": len(fleet.ran("2.0.0")),
            "failed_gates": failed["details"]["evaluation"]["failed_gates"],
            "gate_failed_after_s": round(failed["at"] - created, 2),
            "back_after_gate_failed_s": round(last_back - failed["at"], 2),
            "back_in_poll_intervals": round((last_back - failed["at"]) / poll, 2),
            "nudges_received": fleet.nudges,
            "http_5xx": sum(v for k, v in fleet.status_counts.items() if k.startswith("5")),
        }
    finally:
        for p in procs:
            p.stop()
        schema.drop()


def good_release(repo: Path, size: int, poll: float, soak: float, work: Path) -> dict:
    schema = PgSchema()
    base = work / "good"
    procs = start(1, base, schema.url, repo_dir=repo, poll_interval_s=poll)
    try:
        token = admin_token(base)
        api = httpx.Client(base_url=procs[0].url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        fleet = Fleet(
            procs[0].url,
            Scenario(poll_interval_s=poll, install_delay_s=1.0),
            size=size,
            admin_token=token,
            max_connections=128,
        )
        asyncio.run(fleet.enroll())
        fleet.preinstall(_active(api, "1.0.0"))
        _active(api, "1.1.0")
        state: dict = {}
        start_at = time.monotonic() + 2 * poll

        def step(f: Fleet) -> bool:
            if "rid" not in state:
                if time.monotonic() < start_at:
                    return False
                r = api.post(
                    "/v1/rollouts",
                    json={
                        "name": "digits",
                        "version": "1.1.0",
                        "soak_s": soak,
                        "gates": {"min_devices": 5, "min_requests": 200},
                    },
                )
                r.raise_for_status()
                state.update(rid=r.json()["id"], t0=time.time())
                return False
            if "all_on" not in state and f.count_on("1.1.0") == size:
                state["all_on"] = time.time()
            return (
                "all_on" in state and api.get(f"/v1/rollouts/{state['rid']}").json()["state"] == "completed"
            )

        ok = asyncio.run(fleet.run(until=step, timeout=40 * poll + 8 * soak, check_every=0.25))
        rid, t0, all_on = state["rid"], state["t0"], state.get("all_on", time.time())
        audit = api.get(f"/v1/rollouts/{rid}/audit").json()
        opened = [a for a in audit if a["action"] == "rollout.wave_opened"]
        completed = next((a["at"] for a in audit if a["action"] == "rollout.completed"), None)
        return {
            "devices": size,
            "poll_interval_s": poll,
            "soak_s_per_wave": soak,
            "waves": [w["details"]["percent"] for w in opened],
            "wave_sizes": [w["details"]["wave_size"] for w in opened],
            "reached_all": ok,
            "all_devices_on_it_s": round(all_on - t0, 1),
            "rollout_completed_s": round(completed - t0, 1) if completed else None,
            "wave_open_times_s": [round(w["at"] - t0, 1) for w in opened],
        }
    finally:
        for p in procs:
            p.stop()
        schema.drop()


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a quick look)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: throughput,containment,good")
    args = ap.parse_args()
    q = args.quick
    skip = set(args.skip.split(",")) - {""}
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-server-bench-"))
    out: dict = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or _cpu_name(),
            "cores": os.cpu_count(),
            "loadavg_at_start": load,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    console.print(f"[bold]edgefleet server benchmark[/] ({os.cpu_count()} cores, load average {load[0]:.1f})")
    if "throughput" not in skip:
        console.print("heartbeat throughput")
        out["throughput"] = []
        for db in ("sqlite", "postgresql"):
            out["throughput"] += throughput(db, 300 if q else 1000, 5 if q else 10, 32, work)
    repo = None
    if {"containment", "good"} - skip:
        console.print("building a repository with real bundles")
        repo = build_repo(work)
    size = 200 if q else 1000
    poll = 5.0
    if "containment" not in skip:
        out["containment"] = []
        for mqtt in (None, "mqtt://127.0.0.1:1883"):
            console.print(f"containment ({size} devices, {'MQTT nudges' if mqtt else 'polling only'})")
            out["containment"].append(containment(repo, size, poll, mqtt, work))
            console.print(f"  {out['containment'][-1]}")
    if "good" not in skip:
        console.print(f"good release through the default waves ({size} devices)")
        out["good_release"] = good_release(repo, size, poll, 5.0 if q else 10.0, work)
        console.print(f"  {out['good_release']}")
    out["loadavg_at_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    report(out)
    console.print(f"wrote {RESULTS}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def report(out: dict) -> None:
    if out.get("throughput"):
        t = Table(title="heartbeats (load generator in its own process, 32 connections)")
        for c in (
            "database",
            "processes",
            "heartbeats/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "server CPU us/hb",
            "vs SQLite x1",
        ):
            t.add_column(c, justify="right")
        ref = out["throughput"][0]["per_s"] or 1
        for r in out["throughput"]:
            t.add_row(
                r["db"],
                str(r["processes"]),
                f"{r['per_s']:.0f}",
                f"{r['p50_ms']}",
                f"{r['p99_ms']}",
                str(r["errors"]),
                f"{r['server_cpu_us_per_heartbeat']:.0f}",
                f"{r['per_s'] / ref:.2f}",
            )
        console.print(t)
    for c in out.get("containment", []):
        console.print(
            f"containment ({c['nudges']}): {c['ever_ran_bad']} of {c['devices']} devices ever ran the bad release "
            f"(first wave {c['first_wave']}, gate minimum {c['gate_min_devices']}); gate failed "
            f"{c['gate_failed_after_s']}s after creation; all back {c['back_after_gate_failed_s']}s later "
            f"= {c['back_in_poll_intervals']} poll intervals of {c['poll_interval_s']}s"
        )
    g = out.get("good_release")
    if g:
        console.print(
            f"good release: {g['devices']} devices on it after {g['all_devices_on_it_s']}s "
            f"(waves {g['waves']}, sizes {g['wave_sizes']}, soak {g['soak_s_per_wave']}s, poll {g['poll_interval_s']}s)"
        )


if __name__ == "__main__":
    main()
