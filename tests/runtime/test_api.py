"""The local HTTP API over a real uvicorn server on loopback (TCP and a Unix socket)."""

from __future__ import annotations

import base64
import io
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from edgefleet.runtime import (
    ApiConfig,
    ApiServer,
    BatcherConfig,
    FallbackConfig,
    OrtEngine,
    Runtime,
    RuntimeConfig,
)


@pytest.fixture
def served(digits_bundle):
    rt = Runtime.from_bundle(digits_bundle)
    srv = ApiServer(rt, ApiConfig(port=0)).start()
    client = httpx.Client(base_url=srv.url, timeout=10)
    yield rt, client
    client.close()
    srv.stop()
    rt.close()


def _ok_json(digits_split, n=2):
    return {"inputs": {"input": digits_split.x_test[:n].tolist()}}


def test_predict_json(served, digits_split, digits_mlp):
    _, c = served
    r = c.post("/v1/predict", json={**_ok_json(digits_split, 3), "priority": "urgent", "deadline_ms": 5000})
    assert r.status_code == 200, r.text
    body = r.json()
    want = OrtEngine(digits_mlp).predict({"input": (digits_split.x_test[:3] / 16).astype(np.float32)})
    assert [p["class"] for p in body["predictions"]] == want["label"].tolist()
    assert body["model"] == {"name": "digits", "version": "1.0.0", "variant": "cpu"}
    assert body["tier"] == "primary" and len(body["outputs"]["probabilities"]) == 3
    # a single-input model also takes the batch itself
    r2 = c.post("/v1/predict", json={"inputs": digits_split.x_test[:1].tolist()})
    assert r2.json()["predictions"][0]["class"] == want["label"][0]


def test_predict_binary_payloads(served, digits_split):
    _, c = served
    x = digits_split.x_test[:4].astype(np.float32)
    r = c.post(
        "/v1/predict?dtype=float32&shape=4,64&priority=high",
        content=x.tobytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    b64 = {
        "inputs": {
            "input": {"b64": base64.b64encode(x.tobytes()).decode(), "dtype": "float32", "shape": [4, 64]}
        }
    }
    r2 = c.post("/v1/predict", json=b64)
    buf = io.BytesIO()
    np.savez(buf, input=x)
    r3 = c.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "application/x-npz"})
    classes = [[p["class"] for p in r.json()["predictions"]] for r in (r, r2, r3)]
    assert classes[0] == classes[1] == classes[2] and len(classes[0]) == 4


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_input"),
        ({"json": [1, 2, 3]}, 422, "validation"),
        ({"json": {"inputs": {"input": [[1, 2]]}}}, 422, "validation"),
        ({"json": {"inputs": {"input": [[1] * 64]}, "surprise": 1}}, 422, "validation"),
        (
            {
                "content": b'{"inputs": {"input": [[NaN' + b", 0" * 63 + b"]]}}",
                "headers": {"content-type": "application/json"},
            },
            422,
            "validation",
        ),
        ({"json": {"inputs": {"input": [[1] * 64]}, "deadline_ms": 0}}, 504, "deadline_exceeded"),
        ({"json": {"inputs": {"input": [[1] * 64]}, "priority": "whenever"}}, 422, "validation"),
        (
            {"json": {"inputs": {"input": {"b64": "!!!", "dtype": "float32", "shape": [1, 64]}}}},
            422,
            "validation",
        ),
        (
            {"json": {"inputs": {"input": {"b64": "AAAA", "dtype": "float32", "shape": [1, 64]}}}},
            422,
            "validation",
        ),
        ({"content": b"abc", "headers": {"content-type": "text/plain"}}, 400, "invalid_input"),
        (
            {
                "content": b"abc",
                "params": {"dtype": "float32", "shape": "1,64"},
                "headers": {"content-type": "application/octet-stream"},
            },
            422,
            "validation",
        ),
        ({"content": b"not npz", "headers": {"content-type": "application/x-npz"}}, 400, "invalid_input"),
    ],
)
def test_bad_requests_get_clear_4xx_errors(served, kwargs, status, code):
    rt, c = served
    r = c.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["message"] and body.get("hint")
    assert c.get("/healthz").status_code == 200  # and the server is fine


def test_huge_payload_is_refused_before_it_is_read(digits_bundle, digits_split):
    rt = Runtime.from_bundle(digits_bundle)
    with ApiServer(rt, ApiConfig(port=0, max_body_bytes=10_000)) as srv, httpx.Client(base_url=srv.url) as c:
        big = {"inputs": {"input": np.zeros((200, 64)).tolist()}}
        r = c.post("/v1/predict", json=big)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

        def chunks():  # no Content-Length: the streamed body is counted as it arrives
            yield b'{"inputs": {"input": ['
            for _ in range(2000):
                yield b"[" + b"0," * 63 + b"0],"
            yield b"[0]]}}"

        r2 = c.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r2.status_code == 413
        assert c.post("/v1/predict", json=_ok_json(digits_split)).status_code == 200
    rt.close()


def test_model_health_and_metrics(served, digits_split):
    _, c = served
    c.post("/v1/predict", json=_ok_json(digits_split))
    c.post("/v1/predict", json={"inputs": {"input": [[1]]}})
    m = c.get("/v1/model").json()
    assert m["key"] == "digits/1.0.0/cpu" and m["manifest"]["inputs"][0]["name"] == "input"
    assert m["status"]["serving"] is True
    assert c.get("/healthz").json() == {"status": "ok", "model": "digits/1.0.0/cpu"}
    text = c.get("/metrics").text
    for name in (
        "requests_total",
        "request_seconds_bucket",
        "batch_size_bucket",
        "queue_depth",
        "fallbacks",
        "escalations",
        "model_info",
    ):
        assert f"edgefleet_runtime_{name}" in text
    assert 'edgefleet_runtime_requests_total{outcome="validation",tier="none"} 1.0' in text
    spec = c.get("/openapi.json").json()
    assert "/v1/predict" in spec["paths"] and "PredictRequest" in spec["components"]["schemas"]
    assert c.get("/docs").status_code == 200


def test_token_auth(digits_bundle, digits_split):
    rt = Runtime.from_bundle(digits_bundle)
    with ApiServer(rt, ApiConfig(port=0, token="s3cret-token")) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.post("/v1/predict", json=_ok_json(digits_split)).status_code == 401
        r = c.post("/v1/predict", json=_ok_json(digits_split), headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/metrics").status_code == 401 and c.get("/v1/model").status_code == 401
        auth = {"Authorization": "Bearer s3cret-token"}
        assert c.post("/v1/predict", json=_ok_json(digits_split), headers=auth).status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness needs no token
    rt.close()


def test_rate_limit_per_client(digits_bundle, digits_split):
    rt = Runtime.from_bundle(digits_bundle)
    with (
        ApiServer(rt, ApiConfig(port=0, rate_limit_rps=1, rate_limit_burst=3)) as srv,
        httpx.Client(base_url=srv.url) as c,
    ):
        codes = [c.post("/v1/predict", json=_ok_json(digits_split)).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = c.post("/v1/predict", json=_ok_json(digits_split))
        assert r.json()["error"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
    rt.close()


def test_overload_is_503_with_retry_after(digits_mlp, doubles, digits_split):
    gate = doubles.Gate(OrtEngine(digits_mlp))
    # no model-call timeout: the stuck call must stay stuck however slowly the requests arrive
    cfg = RuntimeConfig(
        batcher=BatcherConfig(max_batch_size=1, max_delay_ms=0, max_queue=2),
        fallback=FallbackConfig(timeout_ms=None),
    )
    rt = Runtime.from_bundle(gate, cfg)
    try:
        with ApiServer(rt, ApiConfig(port=0)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
            x = {"inputs": {"input": (digits_split.x_test[:1] / 16).tolist()}}
            with ThreadPoolExecutor(3) as ex:
                # release inside the executor: leaving it waits for the pending posts, stuck on the gate
                try:
                    pending = [ex.submit(c.post, "/v1/predict", json=x)]
                    assert gate.entered.wait(60)  # the first request is running (stuck) ...
                    pending += [ex.submit(c.post, "/v1/predict", json=x) for _ in range(2)]
                    waited = time.monotonic() + 60
                    while rt.pipeline.queue_depth < 2:  # ... and two are queued
                        assert time.monotonic() < waited, [p.result() for p in pending if p.done()]
                        threading.Event().wait(0.01)
                    r = c.post("/v1/predict", json=x)
                    assert r.status_code == 503 and r.json()["error"] == "overloaded"
                    assert int(r.headers["retry-after"]) >= 1
                finally:
                    gate.release()
                assert [p.result(10).status_code for p in pending] == [200, 200, 200]
    finally:
        gate.release()
        rt.close()


def test_unix_socket_is_owner_only(digits_bundle, digits_split, tmp_path):
    sock = tmp_path / "rt.sock"
    rt = Runtime.from_bundle(digits_bundle)
    with ApiServer(rt, ApiConfig(uds=str(sock))):
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://rt") as c:
            r = c.post("/v1/predict", json=_ok_json(digits_split))
            assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    assert not sock.exists()  # removed on stop
    rt.close()
