"""Helpers for server tests: a settable clock, a harness over the app, device hardware profiles."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient


class Clock:
    """A settable clock for the app (UNIX seconds); tests move it instead of sleeping."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def hardware(
    cls: str = "cpu", *, ram_mb: int = 4096, ort: str | None = "1.20.0", isa=("avx2",), **tags: str
) -> dict:
    return {
        "arch": "aarch64" if cls == "pi4" else "x86_64",
        "cores": 4,
        "ram_mb": ram_mb,
        "disk_free_mb": 10_000,
        "isa_flags": list(isa),
        "onnxruntime_version": ort,
        "device_class": cls,
        "tags": dict(tags),
    }


class Harness:
    """An app on a test client with an admin token and helpers for devices and rollouts."""

    def __init__(self, client: TestClient, clock: Clock) -> None:
        self.c = client
        self.clock = clock
        self.ctx = client.app.state.ctx
        self.admin_token = self.ctx.config.admin_token_path.read_text().strip()
        self.admin = {"Authorization": f"Bearer {self.admin_token}"}
        self.devices: dict[str, dict[str, Any]] = {}

    def token(self, role: str) -> dict[str, str]:
        r = self.c.post(
            "/v1/operator-tokens",
            json={"name": f"{role}-{secrets.token_hex(3)}", "role": role},
            headers=self.admin,
        )
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    def enroll_token(self, **tags: str) -> str:
        r = self.c.post("/v1/enrollment-tokens", json={"tags": tags}, headers=self.admin)
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def enroll(
        self,
        cls: str = "cpu",
        *,
        tags: dict[str, str] | None = None,
        first_beat: bool = True,
        **hw: Any,
    ) -> dict[str, Any]:
        """Enroll a device; like an agent, it then reports once (``first_beat=False``: it stays pending)."""
        tok = self.enroll_token(**(tags or {}))
        r = self.c.post("/v1/enroll", json={"token": tok, "hardware": hardware(cls, **hw)})
        assert r.status_code == 200, r.text
        d = r.json()
        d["headers"] = {"Authorization": f"Bearer {d['device_token']}"}
        self.devices[d["device_id"]] = d
        if first_beat:
            self.beat(d, state="enrolled")
        return d

    def beat(
        self,
        dev: dict[str, Any],
        *,
        active: dict | None = None,
        health: dict | None = None,
        state: str = "idle",
        events: list | None = None,
        expect: int = 200,
    ) -> dict[str, Any]:
        body = {"device_id": dev["device_id"], "state": state, "health": health or {}, "events": events or []}
        if active is not None:
            body["active"] = active
        r = self.c.post(f"/v1/devices/{dev['device_id']}/heartbeat", json=body, headers=dev["headers"])
        assert r.status_code == expect, r.text
        return r.json()

    def register(self, version: str, **kw: Any) -> dict[str, Any]:
        r = self.c.post("/v1/releases", json={"name": "digits", "version": version, **kw}, headers=self.admin)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def rollout(self, version: str, expect: int = 201, **kw: Any) -> dict[str, Any]:
        body = {"name": "digits", "version": version, **kw}
        r = self.c.post("/v1/rollouts", json=body, headers=self.admin)
        assert r.status_code == expect, r.text
        return r.json()

    def show(self, rid: str) -> dict[str, Any]:
        r = self.c.get(f"/v1/rollouts/{rid}", headers=self.admin)
        assert r.status_code == 200, r.text
        return r.json()

    def act(self, rid: str, action: str, expect: int = 200) -> dict[str, Any]:
        r = self.c.post(f"/v1/rollouts/{rid}/{action}", json={"reason": "test"}, headers=self.admin)
        assert r.status_code == expect, r.text
        return r.json()

    def audit(self, rid: str) -> list[dict[str, Any]]:
        r = self.c.get(f"/v1/rollouts/{rid}/audit", headers=self.admin)
        assert r.status_code == 200, r.text
        return r.json()

    def tick(self, advance: float = 0.0) -> list:
        self.clock.advance(advance)
        return self.ctx.engine.tick()


def active_of(assignment: dict[str, Any]) -> dict[str, Any]:
    """The ``ActiveModel`` a device reports after installing an assignment."""
    return {k: assignment[k] for k in ("name", "version", "variant", "target_path")} | {
        "sha256": assignment["hashes"]["sha256"]
    }


def make_harness(
    tmp_path: Path,
    *,
    db_url: str | None = None,
    repo_dir: Path | None = None,
    keys_dir: Path | None = None,
    **cfg: Any,
) -> tuple[TestClient, Clock]:
    from edgefleet.server import ServerConfig, create_app

    clock = Clock()
    config = ServerConfig(
        data_dir=tmp_path / "server",
        db_url=db_url,
        repo_dir=repo_dir,
        keys_dir=keys_dir if keys_dir is not None else tmp_path / "no-keys",
        engine_enabled=False,
        **cfg,
    )
    app = create_app(config, clock=clock)
    return TestClient(app), clock


GOOD = {
    "requests": 100,
    "errors": 1,
    "latency_p95_ms": 5.0,
    "mean_confidence": 0.92,
    "golden_pass": True,
    "drift_score": 0.05,
}
FAST = {"min_devices": 2, "min_requests": 100, "min_control_requests": 100}


def fleet_on_v1(h: Harness, n: int = 20, **enroll_kw) -> list[dict]:
    """``n`` devices running digits 1.0.0 through a completed rollout, reporting healthy figures."""
    devs = [h.enroll(**enroll_kw) for _ in range(n)]
    h.register("1.0.0")
    r = h.rollout("1.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    for d in devs:
        a = h.beat(d)["assignment"]
        d["v1"] = active_of(a)
        h.beat(d, active=d["v1"], health=GOOD)
    h.tick(1)
    assert h.show(r["id"])["state"] == "completed"
    return devs


def install(
    h: Harness, devs: list[dict], health: dict, version: str = "2.0.0", others: dict = GOOD
) -> list[dict]:
    """Every device assigned ``version`` installs it and reports ``health`` (the rest ``others``)."""
    got = []
    for d in devs:
        a = h.beat(d, active=d.get("active", d["v1"]))["assignment"]
        if a["version"] == version:
            d["active"] = active_of(a)
            h.beat(d, active=d["active"], health=health)
            got.append(d)
        else:
            h.beat(d, active=d.get("active", d["v1"]), health=others)
    return got
