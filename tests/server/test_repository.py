"""Serving the TUF repository (Range, ETag), keeping the timestamp fresh, registering releases."""

from __future__ import annotations

import hashlib
import json

import pytest
from servertools import Harness, make_harness


def _target_url(h: Harness, version: str = "1.0.0", variant: str = "cpu") -> tuple[str, bytes]:
    rel = h.register(version)
    v = next(x for x in rel["variants"] if x["variant"] == variant)
    path, sha = v["target_path"], v["sha256"]
    d, _, base = path.rpartition("/")
    url = f"/repository/targets/{d}/{sha}.{base}"
    data = (h.ctx.repo.targets_dir / d / f"{sha}.{base}").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha
    return url, data


def test_metadata_and_targets_are_served_with_etag_and_range(harness):
    h = harness
    r = h.c.get("/repository/metadata/1.root.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert json.loads(r.content)["signed"]["_type"] == "root"
    etag = r.headers["etag"]
    r = h.c.get("/repository/metadata/1.root.json", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    assert h.c.get("/repository/metadata/timestamp.json").headers["cache-control"] == "no-cache"

    url, data = _target_url(h)
    r = h.c.get(url)
    assert r.status_code == 200 and r.content == data and r.headers["accept-ranges"] == "bytes"
    r = h.c.get(url, headers={"Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == data[100:]
    assert r.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    r = h.c.get(url, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == data[:10]
    r = h.c.get(url, headers={"Range": f"bytes={len(data) + 10}-"})
    assert r.status_code == 416
    r = h.c.head(url)
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(data)


@pytest.mark.parametrize(
    "path",
    [
        "/repository/metadata/../../keys/timestamp.pem",
        "/repository/metadata/%2e%2e/%2e%2e/etc/passwd",
        "/repository/targets/..%2f..%2fkeys",
        "/repository/metadata/.edgefleet/config.json",
        "/repository/metadata/nope.json",
        "/repository/targets/",
    ],
)
def test_repository_refuses_paths_outside_it(harness, path):
    r = harness.c.get(path)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_enrollment_tells_the_device_which_root_to_pin(harness):
    h = harness
    dev = h.enroll()
    root = (h.ctx.repo.metadata_dir / "root.json").read_bytes()
    assert dev["root_json_sha256"] == hashlib.sha256(root).hexdigest()
    assert dev["repository_url"] == "http://testserver/repository/"


def test_timestamp_is_refreshed_when_due_and_only_then(tmp_path, repo_copy):
    client, clock = make_harness(
        tmp_path, repo_dir=repo_copy / "repo", keys_dir=repo_copy / "keys", timestamp_refresh_margin_s=3600
    )
    with client:
        h = Harness(client, clock)
        repo = h.ctx.repo
        assert repo.refresh_if_due(h.ctx.db) is None  # a fresh timestamp (1 day) is not due
        # the timestamp gets close to expiry: re-signed (by the publisher's tools) for 30 minutes only
        from datetime import timedelta

        from edgefleet.registry import Repository

        Repository(repo.repo_dir, repo_copy / "keys").refresh_timestamp(expires_in=timedelta(minutes=30))
        before = json.loads((repo.metadata_dir / "timestamp.json").read_bytes())["signed"]
        res = repo.refresh_if_due(h.ctx.db)
        assert res is not None and res["timestamp_version"] == before["version"] + 1
        after = json.loads((repo.metadata_dir / "timestamp.json").read_bytes())["signed"]
        assert after["version"] == before["version"] + 1 and after["expires"] > before["expires"]
        assert repo.refresh_if_due(h.ctx.db) is None  # fresh again
        log = h.c.get(
            "/v1/audit", params={"action": "repository.timestamp_refreshed"}, headers=h.admin
        ).json()
        assert len(log) == 1 and log[0]["details"]["timestamp_version"] == after["version"]
        r = h.c.post("/v1/repository/refresh", headers=h.admin)
        assert r.status_code == 200 and r.json()["result"]["timestamp_version"] == after["version"] + 1


def test_server_without_keys_serves_but_does_not_sign(harness):
    h = harness
    assert not h.ctx.repo.can_refresh()
    assert h.ctx.repo.refresh_if_due(h.ctx.db, force=True) is None
    assert h.c.post("/v1/repository/refresh", headers=h.admin).status_code == 409
    status = h.c.get("/v1/repository", headers=h.admin).json()
    assert status["can_refresh"] is False and status["timestamp"]["version"] >= 1


def test_release_registration_reads_variants_and_requirements(harness):
    h = harness
    r = h.c.post("/v1/releases", json={"name": "digits", "version": "2.0.0"}, headers=h.admin)
    assert r.status_code == 201
    rel = r.json()
    pi4 = next(v for v in rel["variants"] if v["variant"] == "pi4")
    assert pi4["runtime"]["min_ram_mb"] == 2048 and pi4["runtime"]["isa_flags"] == ["neon"]
    assert pi4["target_path"] == "digits/2.0.0/pi4.tar" and len(pi4["sha256"]) == 64
    again = h.c.post("/v1/releases", json={"name": "digits", "version": "2.0.0"}, headers=h.admin)
    assert again.status_code == 200 and again.json() == rel  # idempotent
    r = h.c.post("/v1/releases", json={"name": "digits", "version": "7.0.0"}, headers=h.admin)
    assert r.status_code == 404 and "1.0.0" in r.json()["hint"]
    r = h.c.post("/v1/releases", json={"name": "nomodel", "version": "1.0.0"}, headers=h.admin)
    assert r.status_code == 404 and "publish" in r.json()["hint"]
    listed = h.c.get("/v1/releases", headers=h.admin).json()
    assert [x["version"] for x in listed] == ["2.0.0"]
    assert h.c.get("/v1/releases/digits/2.0.0", headers=h.admin).json()["id"] == rel["id"]
    assert h.c.get("/v1/releases/digits/1.0.0", headers=h.admin).status_code == 404


def test_no_repository_is_a_clear_error(tmp_path):
    client, clock = make_harness(tmp_path, repo_dir=tmp_path / "missing")
    with client:
        h = Harness(client, clock)
        r = h.c.post("/v1/releases", json={"name": "digits", "version": "1.0.0"}, headers=h.admin)
        assert r.status_code == 400 and "no TUF repository" in r.json()["message"]
        assert h.c.get("/repository/metadata/root.json").status_code == 404
        assert h.enroll()["root_json_sha256"] is None


def test_registering_a_release_published_without_online_keys_signs_it(
    tmp_path, repo_copy, digits_mlp, digits_split
):
    """The publisher holds root and targets keys only; the server's online keys make the release visible."""
    import shutil

    from edgefleet.bundle import create_bundle
    from edgefleet.registry import Repository

    publisher = tmp_path / "publisher-keys"
    publisher.mkdir(mode=0o700)
    for f in (repo_copy / "keys").iterdir():
        if not f.name.startswith(("snapshot-", "timestamp-")):
            shutil.copy2(f, publisher / f.name)
    bundle = create_bundle(
        digits_mlp,
        tmp_path / "v3.tar",
        name="digits",
        version="3.0.0",
        variant="cpu",
        inputs_raw=digits_split.x_test[:8],
        preprocess=[{"op": "scale", "factor": 1 / 16}],
    )
    assert Repository(repo_copy / "repo", publisher).publish(bundle, delta=False).pending
    client, clock = make_harness(tmp_path, repo_dir=repo_copy / "repo", keys_dir=repo_copy / "keys")
    with client:
        h = Harness(client, clock)
        assert h.c.get("/v1/repository", headers=h.admin).json()["pending"] is True
        rel = h.register("3.0.0")
        assert rel["variants"][0]["target_path"] == "digits/3.0.0/cpu.tar"
        status = h.c.get("/v1/repository", headers=h.admin).json()
        assert status["pending"] is False  # snapshot and timestamp now list the new targets
        log = h.c.get(
            "/v1/audit", params={"action": "repository.timestamp_refreshed"}, headers=h.admin
        ).json()
        assert log and log[-1]["details"]["pending_publish"] is True
