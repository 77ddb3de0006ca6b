"""Heartbeats, health counters, commands, telemetry ingest and bad input on the device-facing API."""

from __future__ import annotations

import json

import pytest
from servertools import active_of

HB = "/v1/devices/{}/heartbeat"


def _rollout_v1(h, devs):
    h.register("1.0.0")
    h.rollout("1.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
    return [active_of(h.beat(d)["assignment"]) for d in devs]


def test_heartbeat_records_report_and_accumulates_health_per_build(harness):
    h = harness
    dev = h.enroll()
    (v1,) = _rollout_v1(h, [dev])
    resp = h.beat(
        dev,
        active=v1,
        health={
            "requests": 100,
            "errors": 2,
            "latency_p95_ms": 4.0,
            "mean_confidence": 0.9,
            "golden_pass": True,
        },
    )
    assert resp["assignment"]["version"] == "1.0.0" and resp["commands"] == []
    assert 54 <= resp["poll_interval_s"] <= 66  # 60 s with +/-10% jitter advice
    h.beat(
        dev, active=v1, health={"requests": 300, "errors": 2, "latency_p95_ms": 8.0, "mean_confidence": 0.8}
    )
    rec = h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()
    t = rec["health_totals"]
    assert (t["requests"], t["errors"]) == (400, 4)
    assert t["latency_p95_ms"] == pytest.approx((4 * 100 + 8 * 300) / 400)
    assert t["mean_confidence"] == pytest.approx((0.9 * 100 + 0.8 * 300) / 400)
    assert t["golden_pass"] is True  # kept from the earlier report
    assert rec["active"]["version"] == "1.0.0" and rec["status"] == "online"
    other = {**v1, "version": "1.1.0", "sha256": "b" * 64}
    h.beat(dev, active=other, health={"requests": 10, "errors": 0})
    t = h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()["health_totals"]
    assert (t["requests"], t["golden_pass"]) == (10, None)  # a new build starts new counters


def test_stale_and_offline_marking(harness):
    h = harness
    a, b, c = h.enroll(), h.enroll(), h.enroll()
    h.clock.advance(200)
    h.beat(a)
    h.clock.advance(500)  # b and c: 700 s; a: 500 s
    h.beat(c)
    status = {d["id"]: d["status"] for d in h.c.get("/v1/devices", headers=h.admin).json()["devices"]}
    assert status == {a["device_id"]: "stale", b["device_id"]: "offline", c["device_id"]: "online"}
    offline = h.c.get("/v1/devices", params={"status": "offline"}, headers=h.admin).json()
    assert [d["id"] for d in offline["devices"]] == [b["device_id"]]


def test_selectors_over_tags_and_profile(harness):
    h = harness
    h.enroll("pi4", tags={"region": "eu-west"})
    h.enroll("pi4", tags={"region": "us-east"})
    h.enroll("cpu", tags={"region": "eu-north"})
    q = lambda sel: h.c.get("/v1/devices", params={"selector": sel}, headers=h.admin).json()["total"]  # noqa: E731
    assert q("class=pi4 region=eu-*") == 1
    assert q("region=eu-*") == 2
    assert q("class=pi4,cpu region!=us-*") == 2
    assert q("*") == 3
    assert q("class=jetson") == 0
    r = h.c.get("/v1/devices", params={"selector": "class=="}, headers=h.admin)
    assert r.status_code == 400 and "key=glob" in r.json()["hint"]


def test_failure_state_is_counted_once_when_entered(harness):
    h = harness
    dev = h.enroll()
    h.beat(dev, state="failed")
    first = h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()["last_failure"]
    h.clock.advance(30)
    h.beat(dev, state="failed")
    again = h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()["last_failure"]
    assert first is not None and first == again


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "JSON"),
        (b"[]", "should be an object"),
        (json.dumps({"device_id": "X", "health": {"requests": "many"}}).encode(), "health.requests"),
        (json.dumps({"device_id": "X", "progress": 2}).encode(), "progress"),
        (json.dumps({"device_id": "X", "unknown": 1}).encode(), "unknown"),
        (json.dumps({"device_id": "X", "events": [{}] * 101}).encode(), "events"),
        (json.dumps({"device_id": "X", "sent_at": "yesterday"}).encode(), "sent_at"),
        (b'{"device_id": "X", "health": {"latency_p95_ms": Infinity}}', "finite number"),
        (b'{"device_id": "X", "resources": {"cpu_percent": NaN}}', "not a finite number"),
    ],
)
def test_malformed_heartbeats_are_422_and_change_nothing(harness, body, needle):
    h = harness
    dev = h.enroll()
    before = h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()
    body = body.replace(b'"X"', json.dumps(dev["device_id"]).encode())
    r = h.c.post(
        HB.format(dev["device_id"]),
        content=body,
        headers={**dev["headers"], "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert needle in r.json()["message"] and r.json()["hint"]
    after = h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()
    assert after["last_seen"] == before["last_seen"] and after["state"] == before["state"]


def test_oversized_requests_are_413(harness):
    h = harness
    dev = h.enroll()
    big = json.dumps({"device_id": dev["device_id"], "last_error": "x" * 300_000}).encode()
    r = h.c.post(
        HB.format(dev["device_id"]),
        content=big,
        headers={**dev["headers"], "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b"x" * 10_000

    r = h.c.post(
        HB.format(dev["device_id"]),
        content=chunks(),
        headers={**dev["headers"], "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    r = h.c.post(
        "/v1/enroll", content=b"{}", headers={"Content-Type": "application/json", "Content-Length": "-5"}
    )
    assert r.status_code in (400, 413)
    assert h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()["state"] == "enrolled"


def _window(requests: int = 10) -> dict:
    """A real telemetry window from the telemetry library's Aggregator."""
    import numpy as np

    from edgefleet.telemetry import Aggregator

    agg = Aggregator(tags={"model": "digits"})
    probs = np.array([[0.05, 0.9, 0.05]], dtype=np.float32)
    for _ in range(requests):
        agg.record(None, {"probabilities": probs}, latency_ms=2.0)
    w = agg.flush_window()
    agg.close()
    return w.to_dict()


def test_telemetry_is_stored_idempotent_and_validated(harness):
    h = harness
    dev = h.enroll()
    url = f"/v1/devices/{dev['device_id']}/telemetry"
    windows = [_window(), _window()]
    batch = {"batch_id": "batch-000001", "device_id": dev["device_id"], "windows": windows}
    r = h.c.post(url, json=batch, headers=dev["headers"])
    assert r.status_code == 200 and r.json() == {"accepted": 2, "duplicate": False}
    r = h.c.post(url, json=batch, headers=dev["headers"])
    assert r.json() == {"accepted": 2, "duplicate": True}
    stored = h.c.get(url, headers=dev["headers"]).json()
    assert len(stored) == 2 and stored[0]["window"]["requests"] == 10
    bad = {"batch_id": "batch-000002", "device_id": dev["device_id"], "windows": [windows[0], {"v": 1}]}
    r = h.c.post(url, json=bad, headers=dev["headers"])
    assert r.status_code in (400, 413, 422) and "windows[1]" in r.json()["message"]
    assert len(h.c.get(url, headers=h.admin).json()) == 2  # the bad batch stored nothing
    other = h.enroll()
    assert h.c.get(url, headers=other["headers"]).status_code == 403


def test_telemetry_size_limit_and_device_mismatch(tmp_path, published):
    from servertools import Harness, make_harness

    client, clock = make_harness(tmp_path, repo_dir=published / "repo", max_telemetry_bytes=2000)
    with client:
        h = Harness(client, clock)
        dev = h.enroll()
        url = f"/v1/devices/{dev['device_id']}/telemetry"
        big = {"batch_id": "batch-big-01", "device_id": dev["device_id"], "events": [{"x": "y" * 100}] * 30}
        r = h.c.post(url, json=big, headers=dev["headers"])
        assert r.status_code == 413
        r = h.c.post(url, json={"batch_id": "batch-000003", "device_id": "dev-other"}, headers=dev["headers"])
        assert r.status_code == 422 and "was sent to" in r.json()["message"]
        r = h.c.post(url, json={"batch_id": "short", "device_id": dev["device_id"]}, headers=dev["headers"])
        assert r.status_code == 422
        nan = (
            b'{"batch_id": "batch-nan-01", "device_id": "%s", "events": [{"x": NaN}]}'
            % dev["device_id"].encode()
        )
        r = h.c.post(url, content=nan, headers={**dev["headers"], "Content-Type": "application/json"})
        assert r.status_code == 422 and "non-finite" in r.json()["message"]


def test_agent_refused_event_in_telemetry_marks_the_build_failed(harness):
    h = harness
    dev = h.enroll()
    r = h.c.post(
        f"/v1/devices/{dev['device_id']}/telemetry",
        json={
            "batch_id": "batch-ev-01",
            "device_id": dev["device_id"],
            "events": [{"event": "refused", "sha256": "ab" * 32, "reason": "health check failed"}],
        },
        headers=dev["headers"],
    )
    assert r.status_code == 200
    fail = h.c.get(f"/v1/devices/{dev['device_id']}", headers=h.admin).json()["last_failure"]
    assert fail["build"] == "sha:" + ("ab" * 32)[:60] and "health check" in fail["reason"]


def test_device_patch_tags_moves_it_between_selectors(harness):
    h = harness
    dev = h.enroll(tags={"region": "eu-west"})
    deployer = h.token("deployer")
    r = h.c.patch(f"/v1/devices/{dev['device_id']}", json={"tags": {"region": "us-east"}}, headers=deployer)
    assert r.status_code == 200 and r.json()["tags"] == {"region": "us-east"}
    r = h.c.patch(f"/v1/devices/{dev['device_id']}", json={"tags": {"bad key": "x"}}, headers=deployer)
    assert r.status_code == 422
    log = h.c.get("/v1/audit", params={"action": "device.updated"}, headers=h.admin).json()
    assert log[0]["details"]["tags"] == {"from": {"region": "eu-west"}, "to": {"region": "us-east"}}
