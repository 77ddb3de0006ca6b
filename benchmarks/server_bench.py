"""Control-plane benchmark: enrollment and heartbeat throughput, containment of a bad release, time to 100%.

    .venv/bin/python benchmarks/server_bench.py            # full run (a few minutes)
    .venv/bin/python benchmarks/server_bench.py --quick    # smaller sizes

1. On PostgreSQL: devices enrolled per second (one-time tokens made beforehand; real ``POST /v1/enroll``),
   then heartbeats/s with p50/p99 latency and server CPU per heartbeat of four configurations — 1 or 2
   server processes on one port, one statement per heartbeat or coalesced (the default) — interleaved
   over ``--reps`` rounds, driven by the load generator (``edgefleet.sim._loadgen``) in its own process.
   ``--soak N``: N enrolled devices at ``--interval`` for ``--soak-minutes`` against 2 processes.
2. Containment: N simulated devices on 1.0.0, a bad 2.0.0 (error rate and confidence collapse) rolled
   out with the default waves: how many devices ever ran it, and the time from the gate failing to
   every device back on 1.0.0, by polling alone and with MQTT nudges.
3. A good release (1.1.0): time from creation to every device on it, default waves, soak scaled down.

Writes benchmarks/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from edgefleet.server import ServerConfig, start_server_process
from edgefleet.sim import Fleet, ReleaseBehavior, Scenario
from edgefleet.sim._loadgen import run_enroll_load

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

# (label, server processes on one port, heartbeat_batch_max); 0 = one statement per heartbeat in the
# thread pool (the path before coalescing), 256 = the default (coalesced)
CONFIGS = [
    ("1 process, one write per heartbeat", 1, 0),
    ("1 process, coalesced (default)", 1, 256),
    ("2 processes, one write per heartbeat", 2, 0),
    ("2 processes, coalesced (default)", 2, 256),
]


def enrollment_tokens(db_url: str, n: int) -> list[str]:
    """``n`` one-time enrollment tokens, made directly in the database in one transaction (what the
    operator's token API writes; the benchmark measures the devices' enrollment, not the operator's)."""
    from edgefleet.server._auth import create_enrollment_token
    from edgefleet.server._db import Database

    db = Database(db_url)
    try:
        with db.write() as s:
            now = time.time()
            return [
                create_enrollment_token(s, tags={}, ttl_s=7200, created_by="bench", now=now)[1]
                for _ in range(n)
            ]
    finally:
        db.dispose()


def cpu_seconds(procs: list) -> float:
    """CPU time of the server processes and their workers."""
    total = 0.0
    for p in procs:
        proc = psutil.Process(p.process.pid)
        for q in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(q.cpu_times()[:2])
    return total


def loadgen(spec: dict, path: Path, timeout: float) -> dict:
    path.write_text(json.dumps(spec))
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.sim._loadgen", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout)


def throughput(devices: int, duration: float, reps: int, concurrency: int, work: Path) -> dict:
    """Enrollment rate, then heartbeats/s of each configuration, interleaved over ``reps`` rounds."""
    schema = PgSchema()
    servers: dict[str, Any] = {}
    try:
        for i, (label, workers, batch) in enumerate(CONFIGS):
            cfg = ServerConfig(
                data_dir=work / f"tp{i}",
                db_url=schema.url,
                keys_dir=work / "nokeys",
                heartbeat_batch_max=batch,
                # all four configurations stay up (ten processes with the jobs processes): 6 connections
                # each, at most 12 with overflow, so that they fit PostgreSQL's default max_connections (100)
                db_pool_size=6,
            )
            servers[label] = start_server_process(
                cfg, workers=workers, timeout=300, log_file=work / f"tp{i}.log"
            )
        tokens = enrollment_tokens(schema.url, devices)
        enroll = {}
        creds: list = []
        half = len(tokens) // 2
        for label, toks in ((CONFIGS[1][0], tokens[:half]), (CONFIGS[3][0], tokens[half:])):
            r = asyncio.run(run_enroll_load(servers[label].url, toks, concurrency=concurrency))
            creds += r.devices
            enroll[label] = {
                "devices": len(r.devices),
                "errors": r.errors,
                "seconds": r.seconds,
                "per_s": r.per_s,
            }
            console.print(
                f"  enrolled {len(r.devices)} devices at {r.per_s:.0f}/s ({label}), errors {r.errors}"
            )
        runs: dict[str, list[dict]] = {label: [] for label, _, _ in CONFIGS}
        for rep in range(reps):
            order = CONFIGS[rep % len(CONFIGS) :] + CONFIGS[: rep % len(CONFIGS)]  # rotate: no fixed slot
            for label, _, _ in order:
                procs = [servers[label]]
                c0, t0 = cpu_seconds(procs), time.monotonic()
                spec = {
                    "urls": [servers[label].url],
                    "devices": creds,
                    "concurrency": concurrency,
                    "duration_s": duration,
                    "warmup_s": 1,
                }
                res = loadgen(spec, work / "load.json", duration + 120)
                wall = time.monotonic() - t0
                sent = res["requests"] * wall / duration
                res["server_cpu_us_per_heartbeat"] = round((cpu_seconds(procs) - c0) / max(sent, 1) * 1e6, 1)
                res["loadavg_1m"] = os.getloadavg()[0]
                runs[label].append(res)
                console.print(
                    f"  rep {rep + 1} {label}: {res['per_s']:.0f}/s p99 {res['p99_ms']} ms errors {res['errors']}"
                )
        return {
            "devices": len(creds),
            "concurrency": concurrency,
            "duration_s": duration,
            "enroll": enroll,
            "runs": runs,
        }
    finally:
        for h in servers.values():
            h.stop()
        schema.drop()


def summarize(tp: dict) -> list[dict]:
    """Per configuration: medians and spreads, and the paired ratio to the first configuration."""
    base = tp["runs"][CONFIGS[0][0]]
    rows = []
    for label, workers, batch in CONFIGS:
        rs = tp["runs"][label]
        ratios = [r["per_s"] / b["per_s"] for r, b in zip(rs, base, strict=True) if b["per_s"]]
        rows.append(
            {
                "config": label,
                "processes": workers,
                "heartbeat_batch_max": batch,
                "per_s_median": round(statistics.median(r["per_s"] for r in rs), 1),
                "per_s_min": round(min(r["per_s"] for r in rs), 1),
                "per_s_max": round(max(r["per_s"] for r in rs), 1),
                "p50_ms_median": statistics.median(r["p50_ms"] for r in rs),
                "p99_ms_median": statistics.median(r["p99_ms"] for r in rs),
                "p99_ms_max": max(r["p99_ms"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "cpu_us_per_hb_median": statistics.median(r["server_cpu_us_per_heartbeat"] for r in rs),
                "ratio_median": round(statistics.median(ratios), 2),
                "ratio_min": round(min(ratios), 2),
                "ratio_max": round(max(ratios), 2),
            }
        )
    return rows


ENROLL_LUA = """
-- one POST /v1/enroll per one-time token, each token once (tokens spread over wrk's threads)
local toks = {}
for line in io.lines("%s") do toks[#toks + 1] = line end
local counter, i = 0, 0
function setup(thread) thread:set("first", counter); counter = counter + 1 end
function init(args) step = %d end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local hw = '"hardware":{"arch":"x86_64","cores":4,"ram_mb":2048,"disk_free_mb":10000,"device_class":"cpu"}'
request = function()
  i = i + 1
  local tok = toks[((i - 1) * step + first) %% #toks + 1]
  return wrk.format(nil, nil, nil, '{"token":"' .. tok .. '",' .. hw .. '}')
end
"""
ENROLL_GENERATORS = ("wrk", "httpx")


def _enroll_wrk(url: str, tokens: list[str], seconds: int, work: Path) -> dict:
    """``wrk`` (2 threads, 64 connections) posting each token once for ``seconds``; a reused token would
    answer 401 and count as an error."""
    import re

    toks = work / "enroll-tokens.txt"
    toks.write_text("\n".join(tokens) + "\n")
    script = work / "enroll.lua"
    script.write_text(ENROLL_LUA % (toks, 2))
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", str(script), url + "/v1/enroll"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    done = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
    if done > len(tokens):
        raise RuntimeError(f"wrk sent {done} requests for {len(tokens)} tokens: give it more tokens")
    return {
        "devices": done - errors,
        "errors": errors,
        "per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
    }


def enrollment(devices: int, reps: int, work: Path) -> dict:
    """Enrollment alone, real ``POST /v1/enroll`` with one-time tokens (64 connections) against 1 and 2
    server processes on PostgreSQL, with two load generators interleaved over ``reps`` rounds: ``wrk``
    (C, each token once) and the Python load generator (``httpx`` async in one process, ``devices`` per
    run), which costs the shared 2 cores about as much CPU per request as the server does. Server CPU per
    enrollment is measured for both."""
    schema = PgSchema()
    runs: dict[str, list[dict]] = {}
    servers = {}
    try:
        for workers in (1, 2):
            cfg = ServerConfig(
                data_dir=work / f"enroll{workers}", db_url=schema.url, keys_dir=work / "nokeys"
            )
            servers[workers] = start_server_process(
                cfg, workers=workers, timeout=300, log_file=work / f"enroll{workers}.log"
            )
        have_wrk = subprocess.run(["which", "wrk"], capture_output=True).returncode == 0
        if not have_wrk:
            console.print("[yellow]wrk not found (apt-get install -y wrk): only the httpx generator runs[/]")
        for rep in range(reps):
            for workers, h in servers.items():
                for gen in ENROLL_GENERATORS:
                    if gen == "wrk" and not have_wrk:
                        continue
                    label = f"{workers} process{'es' if workers > 1 else ''}, {gen}"
                    # wrk runs 4 s; 1,500 tokens a second is far above what 2 cores enroll
                    tokens = enrollment_tokens(schema.url, 6000 if gen == "wrk" else devices)
                    c0 = cpu_seconds([h])
                    if gen == "wrk":
                        r = _enroll_wrk(h.url, tokens, 4, work)
                    else:
                        e = asyncio.run(run_enroll_load(h.url, tokens, concurrency=64))
                        r = {"devices": len(e.devices), "errors": e.errors, "per_s": e.per_s}
                    cpu_ms = (cpu_seconds([h]) - c0) / max(r["devices"], 1) * 1e3
                    row = {**r, "server_cpu_ms_per_enrollment": round(cpu_ms, 2),
                           "loadavg_1m": os.getloadavg()[0]}  # fmt: skip
                    runs.setdefault(label, []).append(row)
                    console.print(f"  round {rep + 1} {label}: {row}")
    finally:
        for h in servers.values():
            h.stop()
        schema.drop()
    summary = [
        {
            "config": label,
            "per_s_median": round(statistics.median(r["per_s"] for r in rs), 1),
            "per_s_min": round(min(r["per_s"] for r in rs), 1),
            "per_s_max": round(max(r["per_s"] for r in rs), 1),
            "errors": sum(r["errors"] for r in rs),
            "devices": sum(r["devices"] for r in rs),
            "server_cpu_ms_median": statistics.median(r["server_cpu_ms_per_enrollment"] for r in rs),
        }
        for label, rs in runs.items()
    ]
    return {"runs": runs, "summary": summary}


def soak(devices: int, minutes: float, interval: float, connections: int, work: Path) -> dict:
    """``devices`` enrolled devices (real tokens, real HTTP, real PostgreSQL writes) each sending a
    heartbeat every ``interval`` seconds for ``minutes``, against 2 server processes on one port."""
    schema = PgSchema()
    try:
        cfg = ServerConfig(data_dir=work / "soak", db_url=schema.url, keys_dir=work / "nokeys")
        h = start_server_process(cfg, workers=2, timeout=300, log_file=work / "soak.log")
        try:
            tokens = enrollment_tokens(schema.url, devices)
            e = asyncio.run(run_enroll_load(h.url, tokens, concurrency=64))
            console.print(f"  enrolled {len(e.devices)} devices at {e.per_s:.0f}/s, errors {e.errors}")
            spec = {
                "mode": "paced",
                "urls": [h.url],
                "devices": e.devices,
                "interval_s": interval,
                "duration_s": minutes * 60,
                "concurrency": connections,
            }
            res = loadgen(spec, work / "soak.json", minutes * 60 + 300)
        finally:
            h.stop()
    finally:
        schema.drop()
    res.update(
        devices=len(e.devices),
        enroll_errors=e.errors,
        enroll_per_s=e.per_s,
        interval_s=interval,
        minutes=minutes,
        expected=int(len(e.devices) * minutes * 60 / interval),
    )
    return res


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
    ap.add_argument(
        "--reps", type=int, default=5, help="interleaved repetitions of each throughput configuration"
    )
    ap.add_argument(
        "--enroll",
        type=int,
        default=0,
        metavar="DEVICES",
        help="also measure enrollment against 1 and 2 processes: wrk for 4 s and DEVICES through httpx, per round",
    )
    ap.add_argument("--soak", type=int, default=0, metavar="DEVICES", help="also run DEVICES at --interval")
    ap.add_argument("--soak-minutes", type=float, default=10.0)
    ap.add_argument(
        "--interval", type=float, default=60.0, help="soak: seconds between a device's heartbeats"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
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
        console.print("enrollment and heartbeat throughput on PostgreSQL (configurations interleaved)")
        tp = throughput(300 if q else 2000, 3 if q else 5, args.reps, 64, work)
        out["throughput"] = {**tp, "summary": summarize(tp)}
    if args.enroll:
        console.print(f"enrollment against 1 and 2 processes, wrk and httpx interleaved ({args.reps} rounds)")
        out["enrollment"] = enrollment(args.enroll, args.reps, work)
    if args.soak:
        console.print(f"soak: {args.soak} devices every {args.interval:g}s for {args.soak_minutes:g} minutes")
        out["soak"] = soak(args.soak, args.soak_minutes, args.interval, 64, work)
        console.print(f"  {out['soak']}")
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    report(out)
    console.print(f"wrote {args.out}")


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
    tp = out.get("throughput")
    if tp:
        t = Table(
            title=f"heartbeats/s on PostgreSQL, {tp['devices']} devices, {tp['concurrency']} connections, "
            f"load generator in its own process; medians of {len(next(iter(tp['runs'].values())))} interleaved runs"
        )
        for c in (
            "configuration",
            "heartbeats/s (min-max)",
            "p50 ms",
            "p99 ms (max)",
            "errors",
            "CPU us/hb",
            "vs first row (min-max)",
        ):
            t.add_column(c, justify="right")
        for r in tp["summary"]:
            t.add_row(
                r["config"],
                f"{r['per_s_median']:.0f} ({r['per_s_min']:.0f}-{r['per_s_max']:.0f})",
                f"{r['p50_ms_median']:.1f}",
                f"{r['p99_ms_median']:.1f} ({r['p99_ms_max']:.1f})",
                str(r["errors"]),
                f"{r['cpu_us_per_hb_median']:.0f}",
                f"{r['ratio_median']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})",
            )
        console.print(t)
        for label, e in tp["enroll"].items():
            console.print(
                f"enrollment through {label}: {e['per_s']:.0f} devices/s ({e['devices']}, errors {e['errors']})"
            )
    en = out.get("enrollment")
    if en:
        t = Table(title="enrollment on PostgreSQL (real POST /v1/enroll, one-time tokens, 64 connections)")
        for col in ("configuration, load generator", "devices/s median (min-max)", "errors",
                    "server CPU ms / enrollment"):  # fmt: skip
            t.add_column(col)
        for r in en["summary"]:
            t.add_row(r["config"], f"{r['per_s_median']:.0f} ({r['per_s_min']:.0f}-{r['per_s_max']:.0f})",
                      str(r["errors"]), f"{r['server_cpu_ms_median']:.2f}")  # fmt: skip
        console.print(t)
    sk = out.get("soak")
    if sk:
        console.print(
            f"soak: {sk['devices']} devices every {sk['interval_s']:g}s for {sk['minutes']:g} min: {sk['ok']} of "
            f"{sk['expected']} heartbeats answered 200, errors {sk['errors']}, p50 {sk['p50_ms']} ms, p99 {sk['p99_ms']} ms"
        )
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
