"""What update policies add to the heartbeat path (issue 15 item 7).

A device in a rollout gets one extra step per heartbeat: ``DeviceService._policy_hold`` (the policies are
compiled in memory; the device's selector attributes come back from the heartbeat statement itself, so no
extra query). This measures, on one SQLite database in this process:

* ``beat``: ``DeviceService.heartbeat`` of enrolled devices (the statement, its answer and its signature);
* ``hold``: ``_policy_hold`` for the same devices as if a rollout assigned them a release, with 0 policies,
  with ``--policies`` non-matching ones plus one matching (closed window: the answer is built), and with a
  forced rollout (skips the policies);
* ``engine_parked``: the rollout engine's check, once per pass, of a selected device not yet admitted
  (is its group pinned or deferred?), with the same policies;

as CPU time per call (process time, so other work on a shared machine is not counted), the median of
``--reps`` interleaved repetitions.

Run:  .venv/bin/python benchmarks/update_policy_bench.py [--devices 200] [--beats 2000] [--reps 5]
Writes benchmarks/results/update_policy_bench.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--beats", type=int, default=2000)
    ap.add_argument("--policies", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from edgefleet.protocol import Heartbeat
    from edgefleet.server import ServerConfig, create_app
    from edgefleet.server._update_policies import UpdatePolicyIn

    tmp = Path(tempfile.mkdtemp(prefix="upb-"))
    app = create_app(ServerConfig(data_dir=tmp / "server", keys_dir=tmp / "nokeys", engine_enabled=False))
    ctx = app.state.ctx
    svc, policies = ctx.devices, app.state.update_policies
    client = TestClient(app)
    admin = {"Authorization": f"Bearer {ctx.config.admin_token_path.read_text().strip()}"}
    hw = {"arch": "x86_64", "cores": 4, "ram_mb": 4096, "disk_free_mb": 1, "device_class": "cpu"}
    devs = []
    for i in range(args.devices):
        tok = client.post("/v1/enrollment-tokens", json={"tags": {"site": f"s{i % 4}"}}, headers=admin)
        d = client.post("/v1/enroll", json={"token": tok.json()["token"], "hardware": hw}).json()
        devs.append((d["device_id"], d["device_token"]))
    beats = [Heartbeat(device_id=dev, resources={"metered": False, "power_source": "ac"}) for dev, _ in devs]
    assignment = {"name": "digits", "version": "2.0.0", "hashes": {"sha256": "0" * 64}}
    rows = {}
    for (dev, tok), hb in zip(devs, beats, strict=True):
        row, _ = svc._beats.record(dev, tok, hb, time.time())
        rows[dev] = (None, "ro-bench", None, None, row[4], *row[5:])
    svc._force_cache.update({"ro-bench": False, "ro-forced": True})

    def beat_loop() -> float:
        t = time.process_time()
        for i in range(args.beats):
            dev, tok = devs[i % len(devs)]
            svc.heartbeat(dev, tok, beats[i % len(devs)])
        return (time.process_time() - t) / args.beats

    def hold_loop(rollout: str = "ro-bench") -> float:
        now = time.time()
        t = time.process_time()
        for i in range(args.beats):
            dev, _ = devs[i % len(devs)]
            row = rows[dev]
            if rollout != "ro-bench":
                row = (*row[:1], rollout, *row[2:])
            svc._policy_hold(dev, row, beats[i % len(devs)], assignment, now)
        return (time.process_time() - t) / args.beats

    from sqlalchemy import select

    from edgefleet.server._models import Device
    from edgefleet.server._waves import selector_attrs

    with ctx.db.read() as s:
        rows_dev = list(s.scalars(select(Device)))
        s.expunge_all()

    def parked_loop() -> float:
        """The engine's check per selected, not admitted device and pass (as ``RolloutEngine._pass``)."""
        now = time.time()
        t = time.process_time()
        for i in range(args.beats):
            d = rows_dev[i % len(rows_dev)]
            sig = (d.name, d.device_class, d.arch, repr(d.tags), d.active_name, d.active_version)
            policies.parked(
                lambda d=d: selector_attrs(d), version="2.0.0", now=now, device=(("engine", d.id), sig)
            )
        return (time.process_time() - t) / args.beats

    def set_policies(n: int) -> None:
        for p in policies.list():
            policies.delete(p["name"], actor="bench")
        for k in range(n):
            body = {"selector": f"site=other{k}", "priority": 10, "policy": {"windows": ["02:00-03:00"]}}
            policies.put(f"p{k}", UpdatePolicyIn.model_validate(body), actor="bench")
        if n:  # one that matches a quarter of the devices, window closed for most of the day
            hour = time.gmtime().tm_hour
            win = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
            body = {"selector": "site=s0", "policy": {"windows": [win], "download_only_unmetered": True}}
            policies.put("match", UpdatePolicyIn.model_validate(body), actor="bench")

    results: dict[str, list[float]] = {
        "beat": [],
        "hold_none": [],
        "hold_policies": [],
        "hold_forced": [],
        "engine_parked_policies": [],
    }
    for _ in range(args.reps):
        set_policies(0)
        results["beat"].append(beat_loop())
        results["hold_none"].append(hold_loop())
        set_policies(args.policies)
        results["hold_policies"].append(hold_loop())
        results["hold_forced"].append(hold_loop("ro-forced"))
        results["engine_parked_policies"].append(parked_loop())
    held = sum(
        svc._policy_hold(dev, rows[dev], hb, assignment, time.time()) is not None
        for (dev, _), hb in zip(devs, beats, strict=True)
    )
    med = {k: statistics.median(v) * 1e6 for k, v in results.items()}
    out = {
        "devices": args.devices,
        "beats": args.beats,
        "policies": args.policies + 1,
        "reps": args.reps,
        "held_devices": held,
        "us_per_call_median": {k: round(v, 2) for k, v in med.items()},
        "us_per_call_all": {k: [round(x * 1e6, 2) for x in v] for k, v in results.items()},
        "hold_share_of_beat": round(med["hold_policies"] / med["beat"], 4),
    }
    print(json.dumps(out, indent=2))
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "update_policy_bench.json").write_text(
        json.dumps(out, indent=2) + "\n"
    )
    client.close()


if __name__ == "__main__":
    main()
