"""PostgreSQL: the rollout flow, two real server processes on one database, a database restart mid-rollout."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from servertools import FAST, GOOD, Harness, fleet_on_v1, install, make_harness

from edgefleet.server import ServerConfig, start_server, start_server_process
from edgefleet.sim import Fleet, ReleaseBehavior, Scenario

pytestmark = pytest.mark.postgres


def test_rollout_flow_on_postgres(tmp_path, published, pg_url):
    client, clock = make_harness(tmp_path, db_url=pg_url, repo_dir=published / "repo")
    with client:
        h = Harness(client, clock)
        assert h.ctx.db.dialect == "postgresql"
        devs = fleet_on_v1(h, 12)
        h.register("2.0.0")
        r = h.rollout("2.0.0", waves=[20, 100], soak_s=10, gates=FAST)
        install(h, devs, GOOD)
        h.tick(11)
        assert h.show(r["id"])["wave"] == 2
        install(h, devs, {**GOOD, "errors": 40})
        h.tick(1)
        shown = h.show(r["id"])
        assert shown["state"] == "rolled_back" and "error_rate" in shown["evaluation"]["failed_gates"]
        d = devs[0]
        assert h.beat(d, active=d["active"])["commands"] == ["rollback:1.0.0"]


def _audit(url: str, token: str, action: str) -> list[dict]:
    r = httpx.get(
        f"{url}/v1/audit",
        params={"action": action, "limit": 1000},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()


def _admin_token(*dirs: Path) -> str:
    for d in dirs:
        p = d / "admin-token"
        if p.is_file():
            return p.read_text().strip()
    raise AssertionError("no process wrote the admin token")


def test_two_server_processes_advance_waves_and_refresh_the_timestamp_exactly_once(
    tmp_path, repo_copy, pg_url
):
    from edgefleet.registry import Repository

    # the timestamp is due (30 minutes left, margin 1 hour) when both processes start
    Repository(repo_copy / "repo", repo_copy / "keys").refresh_timestamp(expires_in=timedelta(minutes=30))
    ts_before = Repository(repo_copy / "repo").status()["timestamp"]["version"]
    common = dict(
        db_url=pg_url,
        repo_dir=repo_copy / "repo",
        keys_dir=repo_copy / "keys",
        engine_tick_s=0.05,
        timestamp_check_s=0.05,
        timestamp_refresh_margin_s=3600,
        poll_interval_s=0.3,
        poll_jitter=0.0,
    )
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    from edgefleet.server import free_port

    ports = free_port(), free_port()
    procs: list = []
    try:
        # both start at once: migrations, admin bootstrap and the timestamp check race on the database
        import threading

        def start(d: Path, port: int) -> None:
            procs.append(
                start_server_process(
                    ServerConfig(data_dir=d, **common), port=port, log_file=tmp_path / f"{d.name}.log"
                )
            )

        threads = [
            threading.Thread(target=start, args=(d, p)) for d, p in ((a_dir, ports[0]), (b_dir, ports[1]))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(procs) == 2, (tmp_path / "a.log").read_text(errors="replace")
        urls = [p.url for p in procs]
        token = _admin_token(a_dir, b_dir)
        deadline = time.monotonic() + 60  # the first refresh, however busy the machine
        while not (refreshed := _audit(urls[0], token, "repository.timestamp_refreshed")):
            assert time.monotonic() < deadline, "no process refreshed the timestamp"
            time.sleep(0.2)
        time.sleep(1.0)  # ~20 more timestamp checks in each process: none may refresh it again
        refreshed = _audit(urls[0], token, "repository.timestamp_refreshed")
        assert len(refreshed) == 1, refreshed
        assert Repository(repo_copy / "repo").status()["timestamp"]["version"] == ts_before + 1

        fleet = Fleet(urls, Scenario(poll_interval_s=0.3, install_delay_s=0.05), size=12, admin_token=token)
        asyncio.run(fleet.enroll())
        api = httpx.Client(base_url=urls[1], headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert api.post("/v1/releases", json={"name": "digits", "version": "1.0.0"}).status_code == 201
        r = api.post(
            "/v1/rollouts",
            json={
                "name": "digits",
                "version": "1.0.0",
                "waves": [25, 50, 100],
                "soak_s": 0.5,
                "gates": {"min_devices": 2, "min_requests": 50},
            },
        )
        assert r.status_code == 201, r.text
        rid = r.json()["id"]

        def done(_f: Fleet) -> bool:
            return api.get(f"/v1/rollouts/{rid}").json()["state"] == "completed"

        assert asyncio.run(fleet.run(until=done, timeout=60, check_every=0.3)), api.get(
            f"/v1/rollouts/{rid}"
        ).json()
        audit = api.get(f"/v1/rollouts/{rid}/audit").json()
        actions = [a["action"] for a in audit]
        assert actions.count("rollout.wave_passed") == 3
        assert actions.count("rollout.advanced") == 2 and actions.count("rollout.completed") == 1
        assert actions.count("rollout.wave_opened") == 3
        admitted = sum(
            a["details"].get("admitted", 0) for a in audit if a["action"].startswith("rollout.wave_opened")
        )
        admitted += sum(
            a["details"].get("admitted", 0) for a in audit if a["action"] == "rollout.devices_admitted"
        )
        assert admitted == 12 and api.get(f"/v1/rollouts/{rid}").json()["members"] == {"admitted": 12}
        # the rollout completes when the last wave's devices are admitted and healthy: wait until every
        # simulated device has also seen its assignment through (a busy machine lags a poll or two)
        assert asyncio.run(fleet.run(until=lambda f: f.count_on("1.0.0") == 12, timeout=60)), fleet.count_on(
            "1.0.0"
        )
        assert fleet.status_counts.get("500", 0) == 0
        # both processes did engine work and served devices: the lock, not luck, made it happen once
        assert all(p.process.poll() is None for p in procs)
    finally:
        for p in procs:
            p.stop()


def _pg_restart() -> None:
    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.slow
def test_postgres_restart_mid_rollout(tmp_path, published, pg_url):
    if os.geteuid() != 0 or not Path("/etc/postgresql").is_dir():
        pytest.skip("needs root and a local pg_ctlcluster to restart PostgreSQL")
    cfg = ServerConfig(
        data_dir=tmp_path / "srv",
        db_url=pg_url,
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        engine_tick_s=0.1,
        poll_interval_s=0.3,
    )
    with start_server(cfg) as srv:
        token = srv.admin_token
        scenario = Scenario(
            poll_interval_s=0.3, install_delay_s=0.05, behaviors={"1.0.0": ReleaseBehavior(error_rate=0.0)}
        )
        fleet = Fleet(srv.url, scenario, size=10, admin_token=token)
        asyncio.run(fleet.enroll())
        api = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        api.post("/v1/releases", json={"name": "digits", "version": "1.0.0"}).raise_for_status()
        r = api.post(
            "/v1/rollouts",
            json={
                "name": "digits",
                "version": "1.0.0",
                "waves": [30, 100],
                "soak_s": 3,
                "gates": {"min_devices": 3, "min_requests": 50},
            },
        )
        rid = r.json()["id"]
        restarted = []

        def step(f: Fleet) -> bool:
            if not restarted and f.count_on("1.0.0") >= 3:
                _pg_restart()  # mid wave 1: the database goes away and comes back
                restarted.append(time.monotonic())
            if not restarted:
                return False
            try:
                return api.get(f"/v1/rollouts/{rid}").json()["state"] == "completed"
            except (httpx.HTTPError, ValueError):
                return False

        assert asyncio.run(fleet.run(until=step, timeout=90, check_every=0.3))
        assert restarted and fleet.count_on("1.0.0") == 10
        assert fleet.status_counts.get("500", 0) == 0, fleet.status_counts  # 503 while down, never 500
        actions = [a["action"] for a in api.get(f"/v1/rollouts/{rid}/audit").json()]
        assert actions.count("rollout.wave_passed") == 2 and actions.count("rollout.completed") == 1


def test_hostile_input_on_postgres_is_refused_not_a_5xx(tmp_path, published, pg_url):
    """What PostgreSQL cannot store (NUL characters, NaN, numbers beyond 64 bits) is a 4xx, never a 5xx."""
    client, clock = make_harness(tmp_path, db_url=pg_url, repo_dir=published / "repo")
    with client:
        h = Harness(client, clock)
        dev = h.enroll()
        hb = f"/v1/devices/{dev['device_id']}/heartbeat"
        js = {**dev["headers"], "Content-Type": "application/json"}
        d = dev["device_id"].encode()
        nasty = [
            (hb, b'{"device_id": "%s", "state": "idle\\u0000"}' % d),
            (hb, b'{"device_id": "%s", "last_error": "\\u0000"}' % d),
            (hb, b'{"device_id": "%s", "health": {"latency_p95_ms": NaN}}' % d),
            (hb, b'{"device_id": "%s", "health": {"requests": 100000000000000000000000}}' % d),
            (hb, b'{"device_id": "%s", "health": {"requests": 5, "errors": 9}}' % d),
            (hb, b'{"device_id": "%s", "events": [{"event": "refused", "reason": "\\u0000"}]}' % d),
            (
                "/v1/enroll",
                b'{"token": "efe_xxxxxxxx", "name": "a\\u0000b", "hardware": {"arch": "x", "cores": 1,'
                b' "ram_mb": 1, "disk_free_mb": 1}}',
            ),
        ]
        for url, body in nasty:
            r = h.c.post(url, content=body, headers=js)
            assert 400 <= r.status_code < 500, (body, r.text)
            assert r.json()["message"]
        r = h.c.post(
            "/v1/rollouts",
            json={"name": "digits", "version": "1.0.0", "selector": "a=\u0000"},
            headers=h.admin,
        )
        assert r.status_code == 422
        r = h.c.get("/v1/audit", params={"since_id": 10**30}, headers=h.admin)
        assert r.status_code == 422
        r = h.c.get("/v1/devices?selector=name%3D%00", headers=h.admin)
        assert r.status_code == 422 and "NUL" in r.json()["message"]
        r = h.c.post(
            hb,
            json={
                "device_id": dev["device_id"],
                "state": "ok",
                "health": {"requests": 10**9, "errors": 10**9},
            },
            headers=dev["headers"],
        )
        assert r.status_code == 200
        r = h.c.post(
            hb,
            json={"device_id": dev["device_id"], "state": "ok", "health": {"requests": 10**9, "errors": 0}},
            headers=dev["headers"],
        )
        assert r.status_code == 200  # the counters are 64-bit: 2e9 requests summed
        rec = h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()
        assert rec["state"] == "ok"
