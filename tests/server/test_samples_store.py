"""Sample store: device uploads (auth, dedupe, privacy, caps), queries, policies per group, erasure, retention."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
from servertools import Harness, make_harness


@pytest.fixture
def harness(tmp_path):
    """An app on SQLite without a TUF repository (samples need none): quick to start."""
    client, clock = make_harness(tmp_path)
    with client:
        yield Harness(client, clock)


def png(w: int = 2, h: int = 2) -> bytes:
    """A real (tiny, grey) PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([128] * w) for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def sample(rid: str, *, predicted="3", confidence=0.4, privacy="hash", version="1.0.0", **kw) -> dict:
    s = {
        "request_id": rid,
        "t": 1_700_000_000.0,
        "reason": "low_confidence" if confidence < 0.6 else "random",
        "confidence": confidence,
        "predicted": predicted,
        "privacy": privacy,
        "scores": [0.1, confidence],
        "features": [] if privacy == "drop" else [1.0, 2.0],
        "tags": {"model": "digits", "version": version, "variant": "cpu"},
    }
    if privacy == "hash":
        s["input_hash"] = "ab" * 16
    return s | kw


def upload(h, dev, samples, expect=200):
    r = h.c.post(f"/v1/devices/{dev['device_id']}/samples", json={"samples": samples}, headers=dev["headers"])
    assert r.status_code == expect, r.text
    return r.json()


def test_upload_query_dedupe_and_input(harness):
    h = harness
    eu = h.enroll(tags={"region": "eu"})
    us = h.enroll("pi4", tags={"region": "us"})
    img = png()
    out = upload(
        h,
        eu,
        [
            sample("req-eu-0001"),
            sample("req-eu-0002", privacy="raw", input_b64=base64.b64encode(img).decode(), predicted="7"),
        ],
    )
    assert out == {"accepted": 2, "duplicate": 0, "over_quota": 0}
    assert upload(h, eu, [sample("req-eu-0001")])["duplicate"] == 1  # a retried batch stores nothing twice
    upload(h, us, [sample("req-us-0001", confidence=0.9, version="1.1.0")])
    # queries per device, release, class
    rows = h.c.get("/v1/samples", params={"device_id": eu["device_id"]}, headers=h.admin).json()
    assert [r["request_id"] for r in rows] == ["req-eu-0002", "req-eu-0001"]
    assert (
        rows[0]["region"] == "eu"
        and rows[0]["device_class"] == "cpu"
        and rows[0]["release"] == "digits@1.0.0"
    )
    assert [
        r["request_id"]
        for r in h.c.get("/v1/samples", params={"release": "digits@1.1.0"}, headers=h.admin).json()
    ] == ["req-us-0001"]
    assert [
        r["request_id"] for r in h.c.get("/v1/samples", params={"predicted": "7"}, headers=h.admin).json()
    ] == ["req-eu-0002"]
    one = h.c.get("/v1/samples/req-eu-0002", headers=h.admin).json()
    assert (
        one["input_kind"] == "image"
        and one["content_type"] == "image/png"
        and one["meta"]["scores"] == [0.1, 0.4]
    )
    got = h.c.get("/v1/samples/req-eu-0002/input", headers=h.admin)
    assert got.status_code == 200 and got.content == img and got.headers["content-type"] == "image/png"
    # hashed: no input stored, a clear 404 saying why
    r = h.c.get("/v1/samples/req-eu-0001/input", headers=h.admin)
    assert r.status_code == 404 and "privacy 'hash'" in r.json()["message"]
    stats = h.c.get("/v1/samples/stats", headers=h.admin).json()
    assert stats == {"samples": 3, "labelled": 0, "bytes": len(img), "low_confidence": 2}


def test_upload_needs_the_device_itself(harness):
    h = harness
    a, b = h.enroll(), h.enroll()
    r = h.c.post(
        f"/v1/devices/{a['device_id']}/samples",
        json={"samples": [sample("req-a-00001")]},
        headers=b["headers"],
    )
    assert r.status_code == 403  # another device's token
    r = h.c.post(f"/v1/devices/{a['device_id']}/samples", json={"samples": [sample("req-a-00001")]})
    assert r.status_code == 401
    r = h.c.get("/v1/samples", headers=a["headers"])  # a device token cannot read the fleet's samples
    assert r.status_code == 401 and "operator token" in r.json()["message"]  # as on every operator route
    assert h.c.get("/v1/samples", headers=h.admin).json() == []


@pytest.mark.parametrize(
    "bad",
    [
        {"privacy": "hash", "input_b64": "AAAA"},  # bytes leaving the device against its privacy mode
        {"privacy": "drop", "input_hash": None},  # drop keeps no features
        {"request_id": "short"},
        {"request_id": "x" * 65},
        {"confidence": 1.5},
        {"reason": "because"},
        {"privacy": "raw", "input_b64": "not base64!!"},
        {
            "privacy": "raw",
            "input_b64": base64.b64encode(b"\0" * (200 * 1024)).decode(),
        },  # over the payload cap
        {"tags": {f"k{i}": "v" for i in range(40)}},
        {"content_type": "text/html; <script>"},
    ],
)
def test_bad_samples_are_refused_and_nothing_is_stored(harness, bad):
    h = harness
    dev = h.enroll()
    s = sample("req-bad-0001") | bad
    if bad.get("privacy") == "drop":
        s.pop("input_hash")
    r = h.c.post(
        f"/v1/devices/{dev['device_id']}/samples",
        json={"samples": [sample("req-good-001"), s]},
        headers=dev["headers"],
    )
    assert r.status_code in (413, 422), r.text
    assert r.json()["message"] and r.json().get("hint") is not None or r.status_code == 422
    assert (
        h.c.get("/v1/samples", headers=h.admin).json() == []
    )  # the good one of the batch is not stored either


def test_per_device_byte_cap(tmp_path):
    client, clock = make_harness(tmp_path)
    with client:
        h = Harness(client, clock)
        client.app.state.samples.config.max_device_bytes = 1000
        dev = h.enroll()
        blob = lambda n: base64.b64encode(bytes([n]) * 600).decode()  # noqa: E731
        out = upload(h, dev, [sample(f"req-cap-000{i}", privacy="raw", input_b64=blob(i)) for i in range(3)])
        assert out == {"accepted": 1, "duplicate": 0, "over_quota": 2}
        assert h.c.get("/v1/samples/stats", headers=h.admin).json()["bytes"] == 600


def test_policy_per_device_group(harness):
    h = harness
    eu = h.enroll(tags={"region": "eu"})
    us = h.enroll(tags={"region": "us"})
    assert (
        h.c.get(f"/v1/devices/{eu['device_id']}/sample-policy", headers=eu["headers"]).json()["source"]
        == "none"
    )
    dep = h.token("deployer")
    r = h.c.put(
        "/v1/sample-policies/eu-hard-cases",
        json={
            "selector": "region=eu",
            "priority": 5,
            "policy": {"rate": 0.05, "privacy": "raw", "per_class_daily_cap": 20},
        },
        headers=dep,
    )
    assert r.status_code == 200, r.text
    h.c.put("/v1/sample-policies/everyone", json={"selector": "*", "policy": {"rate": 0.01}}, headers=dep)
    got = h.c.get(f"/v1/devices/{eu['device_id']}/sample-policy", headers=eu["headers"]).json()
    assert (
        got["source"] == "group:eu-hard-cases"
        and got["policy"]["rate"] == 0.05
        and got["policy"]["privacy"] == "raw"
    )
    other = h.c.get(f"/v1/devices/{us['device_id']}/sample-policy", headers=us["headers"]).json()
    assert other["source"] == "group:everyone" and other["policy"]["privacy"] == "hash"  # PII-free by default
    assert other["etag"] != got["etag"]
    # a rate above 5 % or a bad selector is refused
    assert h.c.put("/v1/sample-policies/x", json={"policy": {"rate": 0.5}}, headers=dep).status_code == 422
    r = h.c.put("/v1/sample-policies/x", json={"selector": "region", "policy": {}}, headers=dep)
    assert r.status_code == 400 and r.json()["hint"]
    assert h.c.put("/v1/sample-policies/y", json={"policy": {}}, headers=h.token("viewer")).status_code == 403
    audit = h.c.get("/v1/audit", params={"action": "samples.policy"}, headers=h.admin).json()
    assert [a["details"]["name"] for a in audit] == ["eu-hard-cases", "everyone"]


def test_erase_a_device_and_retention(harness):
    h = harness
    gone, kept = h.enroll(), h.enroll()
    same = base64.b64encode(png()).decode()
    upload(h, gone, [sample("req-gone-001", privacy="raw", input_b64=same), sample("req-gone-002")])
    upload(h, kept, [sample("req-kept-001", privacy="raw", input_b64=same)])
    tel = {"batch_id": "batch-0001", "device_id": gone["device_id"], "windows": [], "events": [{"kind": "x"}]}
    assert (
        h.c.post(f"/v1/devices/{gone['device_id']}/telemetry", json=tel, headers=gone["headers"]).status_code
        == 200
    )
    assert h.c.delete(f"/v1/devices/{gone['device_id']}/data", headers=h.token("deployer")).status_code == 403
    r = h.c.delete(f"/v1/devices/{gone['device_id']}/data", headers=h.admin)
    assert r.status_code == 200, r.text
    assert r.json()["samples"] == 2 and r.json()["telemetry_batches"] == 1
    assert r.json()["blobs"] == 1  # the telemetry batch's; the image is still another device's sample
    assert [s["request_id"] for s in h.c.get("/v1/samples", headers=h.admin).json()] == ["req-kept-001"]
    assert h.c.get("/v1/samples/req-kept-001/input", headers=h.admin).status_code == 200
    entry = h.c.get("/v1/audit", params={"action": "samples.delete_device"}, headers=h.admin).json()
    assert entry[0]["device_id"] == gone["device_id"] and entry[0]["details"]["samples"] == 2
    # retention: an unlabelled sample past 30 days goes with its blob
    h.clock.advance(31 * 86400)
    assert h.ctx.db and h.c.app.state.samples.maintain() == {"samples": 1, "blobs": 1}
    assert h.c.get("/v1/samples", headers=h.admin).json() == []
