"""The S3-compatible blob store, against a real S3 HTTP server on loopback (moto's server, not AWS or MinIO).

The server runs as its own process (``python -m moto.server``) and every call goes over HTTP through boto3,
the same client the store uses in production. The sample flows (upload, input download, erasure by device,
retention) run through the app with ``blob_url=s3://...``, and the bucket is inspected directly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import subprocess
import sys
import time

import pytest
from servertools import Harness, make_harness
from test_samples_store import png, sample, upload

boto3 = pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is not installed")

BUCKET = "edgefleet-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = _free_port()
    env = os.environ | {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto's S3 server did not start on {url} (exit {proc.poll()})")
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket on the loopback server; the AWS_* env vars are what the store's boto3 reads."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"{BUCKET}-{time.monotonic_ns() % 10**9}"
    client.create_bucket(Bucket=name)
    return client, name, s3_endpoint


def keys(client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_store_roundtrip_dedupe_integrity_and_bounds(s3):
    from edgefleet.errors import IntegrityError, NotFoundError, PayloadTooLargeError
    from edgefleet.server._blobs import BlobStore, S3BlobStore

    client, bucket, url = s3
    store = S3BlobStore(bucket, "fleet/blobs", endpoint_url=url, max_blob_bytes=1000)
    assert isinstance(store, BlobStore)
    sha = store.put(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    assert keys(client, bucket) == [f"fleet/blobs/{sha[:2]}/{sha[2:]}"]
    assert store.put(b"hello") == sha and len(keys(client, bucket)) == 1  # content-addressed: stored once
    assert store.get(sha) == b"hello" and store.exists(sha) and store.path(sha) is None
    # a stream, checked against its expected hash; a mismatch stores nothing
    data = os.urandom(900)
    assert store.put_stream(io.BytesIO(data), expected_sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(IntegrityError):
        store.put_stream(io.BytesIO(b"truncated"), expected_sha256="0" * 64)
    assert len(keys(client, bucket)) == 2
    # a bounded read: an object over the limit is refused
    big = store.put(b"x" * 1001)
    with pytest.raises(PayloadTooLargeError):
        store.get(big)
    # an object altered behind the store's back is caught on read
    client.put_object(Bucket=bucket, Key=f"fleet/blobs/{sha[:2]}/{sha[2:]}", Body=b"HELLO")
    with pytest.raises(IntegrityError):
        store.get(sha)
    assert store.delete(sha) is True and store.delete(sha) is False and not store.exists(sha)
    with pytest.raises(NotFoundError):
        store.get(sha)
    with pytest.raises(NotFoundError):
        store.get("../etc/passwd")


def test_bad_blob_urls_and_a_missing_bucket_are_clear_config_errors(s3, tmp_path):
    from edgefleet.errors import ConfigError
    from edgefleet.server import ServerConfig, create_app

    _, _, url = s3
    for blob_url, words in [("s3://no-such-bucket-here/x", "not usable"), ("gs://b/x", "neither s3://")]:
        cfg = ServerConfig(
            data_dir=tmp_path / "srv", keys_dir=tmp_path / "k", blob_url=blob_url, blob_s3_endpoint_url=url
        )
        with pytest.raises(ConfigError, match=words) as e:
            create_app(cfg)
        assert e.value.hint


def test_samples_flow_through_the_s3_store(s3, tmp_path):
    """Upload, input download, erasure by device and retention, with the app's blobs in the bucket."""
    client, bucket, url = s3
    app_client, clock = make_harness(tmp_path, blob_url=f"s3://{bucket}/edgefleet", blob_s3_endpoint_url=url)
    with app_client:
        h = Harness(app_client, clock)
        assert type(h.ctx.blobs).__name__ == "S3BlobStore"
        gone, kept = h.enroll(tags={"region": "eu"}), h.enroll(tags={"region": "us"})
        img, other = png(), png(3, 3)
        same = base64.b64encode(img).decode()
        upload(
            h,
            gone,
            [
                sample("req-gone-001", privacy="raw", input_b64=same),
                sample("req-gone-002", privacy="raw", input_b64=base64.b64encode(other).decode()),
                sample("req-gone-003"),
            ],
        )
        upload(h, kept, [sample("req-kept-001", privacy="raw", input_b64=same)])
        sha_img, sha_other = (hashlib.sha256(b).hexdigest() for b in (img, other))
        assert keys(client, bucket) == sorted(
            f"edgefleet/{s[:2]}/{s[2:]}" for s in (sha_img, sha_other)
        )  # the shared image is stored once
        got = h.c.get("/v1/samples/req-gone-002/input", headers=h.admin)
        assert got.status_code == 200 and got.content == other and got.headers["content-type"] == "image/png"
        # telemetry batches go to the same store
        tel = {"batch_id": "batch-0001", "device_id": gone["device_id"], "windows": [], "events": []}
        r = h.c.post(f"/v1/devices/{gone['device_id']}/telemetry", json=tel, headers=gone["headers"])
        assert r.status_code == 200, r.text
        assert len(keys(client, bucket)) == 3
        # erasure by device: its own blobs leave the bucket; the image another device also sent stays
        r = h.c.delete(f"/v1/devices/{gone['device_id']}/data", headers=h.admin)
        assert r.status_code == 200, r.text
        assert r.json()["samples"] == 3 and r.json()["blobs"] == 2
        assert keys(client, bucket) == [f"edgefleet/{sha_img[:2]}/{sha_img[2:]}"]
        assert h.c.get("/v1/samples/req-kept-001/input", headers=h.admin).content == img
        # retention: past 30 days the unlabelled sample goes, and its blob with it
        h.clock.advance(31 * 86400)
        assert h.c.app.state.samples.maintain() == {"samples": 1, "blobs": 1}
        assert keys(client, bucket) == []
        assert h.c.get("/v1/samples", headers=h.admin).json() == []


def test_an_unreachable_store_is_a_clear_503_and_nothing_is_stored(s3, tmp_path):
    client, bucket, url = s3
    app_client, clock = make_harness(tmp_path, blob_url=f"s3://{bucket}/p", blob_s3_endpoint_url=url)
    with app_client:
        h = Harness(app_client, clock)
        dev = h.enroll()
        client.delete_bucket(Bucket=bucket)  # the bucket disappears under a running server
        r = h.c.post(
            f"/v1/devices/{dev['device_id']}/samples",
            json={
                "samples": [sample("req-lost-001", privacy="raw", input_b64=base64.b64encode(png()).decode())]
            },
            headers=dev["headers"],
        )
        assert r.status_code == 503, r.text
        assert "blob store" in r.json()["message"] and r.json()["hint"]
        assert (
            h.c.get("/v1/samples", headers=h.admin).json() == []
        )  # the row was not written without its bytes


def _cli_server(tmp_path, port: int, *extra: str, env: dict) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "edgefleet.cli", "server", "run", "--data", str(tmp_path / "srv"),
        "--keys", str(tmp_path / "no-keys"), "--port", str(port), *extra,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def test_the_cli_server_keeps_samples_in_the_bucket(s3, tmp_path):
    """``edgefleet server run --blob-url s3://... --blob-endpoint URL``: what an operator types."""
    import httpx
    from servertools import hardware

    client, bucket, url = s3
    env = os.environ | {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    # a bucket that does not exist: a clear error, no traceback, no server
    bad = _cli_server(
        tmp_path, _free_port(), "--blob-url", "s3://no-such-bucket/x", "--blob-endpoint", url, env=env
    )
    out, err = bad.communicate(timeout=120)
    assert bad.returncode != 0 and "no-such-bucket" in err and "not usable" in err, (out, err)
    assert "Traceback" not in err
    port = _free_port()
    proc = _cli_server(
        tmp_path,
        port,
        "--blob-url",
        f"s3://{bucket}/cli",
        env=env | {"EDGEFLEET_SERVER_BLOB_S3_ENDPOINT_URL": url},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
        admin = {"Authorization": f"Bearer {(tmp_path / 'srv' / 'admin-token').read_text().strip()}"}
        with httpx.Client(base_url=base, timeout=30) as c:
            tok = c.post("/v1/enrollment-tokens", json={"tags": {}}, headers=admin).json()["token"]
            dev = c.post("/v1/enroll", json={"token": tok, "hardware": hardware()}).json()
            img = png(4, 4)
            r = c.post(
                f"/v1/devices/{dev['device_id']}/samples",
                json={
                    "samples": [
                        sample("req-cli-0001", privacy="raw", input_b64=base64.b64encode(img).decode())
                    ]
                },
                headers={"Authorization": f"Bearer {dev['device_token']}"},
            )
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            sha = hashlib.sha256(img).hexdigest()
            assert keys(client, bucket) == [f"cli/{sha[:2]}/{sha[2:]}"]
            assert c.get("/v1/samples/req-cli-0001/input", headers=admin).content == img
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"blobs: s3://{bucket}/cli at {url}" in out
