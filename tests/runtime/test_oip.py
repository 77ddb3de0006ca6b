"""The Open Inference Protocol (KServe v2) routes, driven by the real ``tritonclient`` package."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from edgefleet.runtime import ApiConfig, ApiServer, OrtEngine, Runtime
from edgefleet.tls import CertificateAuthority

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture
def served(digits_bundle):
    rt = Runtime.from_bundle(digits_bundle)
    srv = ApiServer(rt, ApiConfig(port=0)).start()
    yield rt, srv
    srv.stop()
    rt.close()


def _tensors(digits_split, n):
    return (digits_split.x_test[:n] / 16).astype(np.float32)


def _client(srv, **kw):
    return httpclient.InferenceServerClient(srv.url.split("://", 1)[1], **kw)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_round_trip(served, digits_split, digits_mlp, binary):
    _, srv = served
    x = _tensors(digits_split, 3)
    want = OrtEngine(digits_mlp).predict({"input": x})
    c = _client(srv)
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("digits") and not c.is_model_ready("other")
        meta = c.get_model_metadata("digits")
        assert meta["versions"] == ["1.0.0"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        res = c.infer("digits", [inp], outputs=outs, request_id="r-1")
        assert res.get_response()["id"] == "r-1"
        assert res.as_numpy("label").tolist() == want["label"].tolist()
        np.testing.assert_allclose(res.as_numpy("probabilities"), want["probabilities"], rtol=1e-5, atol=1e-6)
        # no outputs named: every output comes back, in binary (tritonclient's default)
        res2 = c.infer("digits", [inp], model_version="1.0.0")
        assert res2.as_numpy("label").tolist() == want["label"].tolist()
        with pytest.raises(InferenceServerException, match="not served"):
            c.infer("other", [inp])
        bad = httpclient.InferInput("input", [1, 63], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 63), np.float32), binary_data=binary)
        with pytest.raises(InferenceServerException, match="63"):
            c.infer("digits", [bad])
    finally:
        c.close()


def test_v2_json_by_hand_and_its_limits(digits_bundle, digits_split):
    rt = Runtime.from_bundle(digits_bundle)
    cfg = ApiConfig(port=0, token="s3cret", max_body_bytes=4096)
    x = _tensors(digits_split, 2)
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    try:
        with ApiServer(rt, cfg) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
            assert c.get("/v2/health/live").json() == {"live": True}  # like /healthz: no token
            assert c.get("/v2/models/digits").status_code == 401
            assert c.post("/v2/models/digits/infer", json=body).status_code == 401
            auth = {"Authorization": "Bearer s3cret"}
            r = c.post("/v2/models/digits/infer", json=body, headers=auth)
            assert r.status_code == 200, r.text
            out = {o["name"]: o for o in r.json()["outputs"]}
            assert out["label"]["shape"] == [2] and out["label"]["datatype"] == "INT64"
            assert r.json()["model_name"] == "digits" and r.json()["model_version"] == "1.0.0"
            # the body limit of /v1 holds here too
            big = {"inputs": [{**body["inputs"][0], "data": [0.5] * 64 * 40, "shape": [40, 64]}]}
            assert c.post("/v2/models/digits/infer", json=big, headers=auth).status_code == 413
            # binary sizes that do not add up are refused before any array is built
            head = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1000000, 64],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 256},
                        }
                    ]
                }
            ).encode()
            r = c.post(
                "/v2/models/digits/infer",
                content=head + x[:1].tobytes(),
                headers={**auth, "Inference-Header-Content-Length": str(len(head))},
            )
            assert r.status_code == 422 and "bytes do not make shape" in r.json()["error"]
            # values the runtime's validation refuses are refused the same way as on /v1
            nan = {"inputs": [{**body["inputs"][0], "data": [float("nan")] + [0.0] * 127}]}
            r = c.post("/v2/models/digits/infer", content=json.dumps(nan), headers=auth)
            assert r.status_code == 422 and r.json()["code"] == "validation"
    finally:
        rt.close()


def test_tritonclient_over_tls(digits_bundle, digits_split, digits_mlp, tmp_path):
    ca = CertificateAuthority.init(tmp_path / "ca")
    ca.issue_server(["127.0.0.1", "localhost"]).write(tmp_path / "server.crt", tmp_path / "server.key")
    rt = Runtime.from_bundle(digits_bundle)
    cfg = ApiConfig(port=0, tls_cert=str(tmp_path / "server.crt"), tls_key=str(tmp_path / "server.key"))
    x = _tensors(digits_split, 2)
    try:
        with ApiServer(rt, cfg) as srv:
            assert srv.url.startswith("https://")
            c = _client(srv, ssl=True, ssl_options={"ca_certs": str(tmp_path / "ca" / "ca.crt")})
            try:
                assert c.is_server_ready()
                inp = httpclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                res = c.infer("digits", [inp])
                want = OrtEngine(digits_mlp).predict({"input": x})
                assert res.as_numpy("label").tolist() == want["label"].tolist()
            finally:
                c.close()
    finally:
        rt.close()
