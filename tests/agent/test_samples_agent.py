"""Sampling on the device (issue 13): the runtime host offers live answers to the sampler, the policy comes
from the bundle's sampling.json and then from the server per device group, samples reach the real control
plane (request ids, privacy), wait on a metered link, and feedback labels them."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from agenttools import GOLDEN, PRE

BUNDLE_POLICY = {"rate": 0.0, "low_confidence_rate": 1.0, "low_confidence_threshold": 0.9, "privacy": "raw"}


@pytest.fixture(scope="module")
def sampling_bundle(tmp_path_factory, digits_split, digits_mlp):
    """digits 1.0.0 shipping a sampling.json: every answer under 0.9 confidence is kept, inputs raw."""
    from edgefleet.bundle import create_bundle

    d = tmp_path_factory.mktemp("sampling-bundle")
    (d / "sampling.json").write_text(json.dumps(BUNDLE_POLICY))
    return create_bundle(
        digits_mlp,
        d / "digits-1.0.0.tar",
        name="digits",
        version="1.0.0",
        variant="cpu",
        inputs_raw=digits_split.x_test[:GOLDEN],
        preprocess=PRE,
        extra_files={"sampling.json": d / "sampling.json"},
    )


@pytest.fixture
def plane(tmp_path):
    """The real control plane (in process) with one enrolled device; the device's DirectorClient."""
    from fastapi.testclient import TestClient

    from edgefleet.agent._director import DirectorClient
    from edgefleet.server import ServerConfig, create_app

    app = create_app(
        ServerConfig(data_dir=tmp_path / "server", keys_dir=tmp_path / "nokeys", engine_enabled=False)
    )
    with TestClient(app) as c:
        admin = {"Authorization": f"Bearer {app.state.ctx.config.admin_token_path.read_text().strip()}"}
        tok = c.post("/v1/enrollment-tokens", json={"tags": {"region": "eu"}}, headers=admin).json()["token"]
        hw = {"arch": "x86_64", "cores": 2, "ram_mb": 1024, "disk_free_mb": 1000, "device_class": "cpu"}
        dev = c.post("/v1/enroll", json={"token": tok, "hardware": hw}).json()
        director = DirectorClient("http://testserver", token=dev["device_token"], transport=c._transport)
        yield c, admin, dev["device_id"], director
        director.close()


def _serving(tmp_path, bundle, director, device_id, **kw):
    from edgefleet.agent import RuntimeHost
    from edgefleet.agent._samples import DeviceSampling
    from edgefleet.bundle import Bundle
    from edgefleet.telemetry import Outbox

    outbox = Outbox(tmp_path / "outbox.sqlite")
    sampling = DeviceSampling(outbox, director, device_id, **kw)
    host = RuntimeHost(seed=0)
    host.sampler, host.on_load = sampling.sampler, sampling.bundle_loaded
    host.load(Bundle.open(bundle, tmp_path / "unpacked"))
    return host, sampling, outbox


def _noisy(digits_split, n=60, seed=0):
    x = digits_split.x_test[:n]
    return np.clip(x + np.random.default_rng(seed).normal(0, 5, x.shape), 0, 16).astype(np.float32)


def test_samples_flow_from_the_local_api_to_the_server_and_get_labelled(
    tmp_path, plane, sampling_bundle, digits_split
):
    c, admin, device_id, director = plane
    host, sampling, outbox = _serving(tmp_path, sampling_bundle, director, device_id)
    try:
        assert sampling.source == "bundle" and sampling.sampler.config.privacy == "raw"
        port = host.serve("127.0.0.1", 0)
        x = _noisy(digits_split)
        sampled = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as api:
            for row in x:
                r = api.post("/v1/predict", json={"inputs": row.reshape(1, -1).tolist()})
                assert r.status_code == 200, r.text
                body = r.json()
                conf = body["predictions"][0]["confidence"]
                assert ("request_id" in body) == (conf < 0.9)  # exactly the low-confidence answers
                if "request_id" in body:
                    sampled.append((body["request_id"], str(body["predictions"][0]["class"])))
        assert 0 < len(sampled) < len(x)
        assert len(outbox.peek(1000, kinds=["sample"])) == len(sampled)
        assert sampling.upload() == len(sampled) and len(outbox) == 0
        rows = c.get("/v1/samples", params={"device_id": device_id, "limit": 1000}, headers=admin).json()
        assert {r["request_id"] for r in rows} == {rid for rid, _ in sampled}
        first = c.get(f"/v1/samples/{sampled[0][0]}", headers=admin).json()
        assert (
            first["release"] == "digits@1.0.0"
            and first["region"] == "eu"
            and first["reason"] == "low_confidence"
        )
        assert first["predicted"] == sampled[0][1] and first["input_kind"] == "tabular"
        raw = c.get(f"/v1/samples/{sampled[0][0]}/input", headers=admin).content
        meta = first["meta"]["input_meta"]
        seen = np.frombuffer(raw, dtype=meta["dtype"]).reshape(meta["shape"])
        # the input as the caller sent it (raw pixel values 0..16), before the contract scales it by 1/16:
        # what a reviewer looks at and what retraining feeds through the next release's contract
        assert seen.shape == (64,) and seen.min() >= 0 and seen.max() > 1
        sent = {tuple(row.reshape(-1).tolist()) for row in x}
        assert tuple(seen.tolist()) in sent
        # the application sends the truth for one answer; the device for another
        r = c.post("/v1/feedback", json={"request_id": sampled[0][0], "label": "4"}, headers=admin)
        assert r.status_code == 200 and r.json()["label"] == "4" and r.json()["label_source"] == "application"
        director.post(
            f"/v1/devices/{device_id}/feedback", {"request_id": sampled[1][0], "outcome": {"returned": True}}
        )
        assert c.get(f"/v1/samples/{sampled[1][0]}", headers=admin).json()["outcome"]["value"] == {
            "returned": True
        }
    finally:
        host.close()
        outbox.close()


def test_server_policy_per_group_wins_and_metered_links_wait(tmp_path, plane, sampling_bundle, digits_split):
    c, admin, device_id, director = plane
    metered = {"now": True}
    host, sampling, outbox = _serving(
        tmp_path, sampling_bundle, director, device_id, metered=lambda: metered["now"]
    )
    try:
        r = c.put(
            "/v1/sample-policies/eu",
            json={
                "selector": "region=eu",
                "policy": {"rate": 0.0, "low_confidence_rate": 1.0, "low_confidence_threshold": 0.9},
            },
            headers=admin,
        )
        assert r.status_code == 200, r.text
        sampling.refresh_policy(force=True)
        assert sampling.source == "group:eu" and sampling.sampler.config.privacy == "hash"  # PII-free default
        for row in _noisy(digits_split, 40, seed=1):
            host.predict_result(row.reshape(1, -1))
        queued = len(outbox.peek(1000, kinds=["sample"]))
        assert queued > 0
        assert (
            sampling.upload() == 0 and sampling.counters["deferred_metered"] == 1
        )  # nothing on a metered link
        assert len(outbox.peek(1000, kinds=["sample"])) == queued
        metered["now"] = False
        assert sampling.upload() == queued
        rows = c.get("/v1/samples", params={"device_id": device_id, "limit": 1000}, headers=admin).json()
        assert all(r["privacy"] == "hash" and not r["has_input"] for r in rows)
        # the operator turns sampling off for the group: the device stops without a new release
        c.put(
            "/v1/sample-policies/eu",
            json={"selector": "region=eu", "policy": {"enabled": False}},
            headers=admin,
        )
        sampling.refresh_policy(force=True)
        host.predict_result(_noisy(digits_split, 5, seed=2))
        assert len(outbox.peek(1000, kinds=["sample"])) == 0
        # the group policy removed: back to the bundle's
        c.delete("/v1/sample-policies/eu", headers=admin)
        sampling.refresh_policy(force=True)
        assert sampling.source == "bundle" and sampling.sampler.config.privacy == "raw"
    finally:
        host.close()
        outbox.close()


def test_samples_are_evicted_first_and_counted(tmp_path):
    from edgefleet.telemetry import Outbox, OutboxConfig, Sampler, SamplerConfig

    with Outbox(tmp_path / "o.sqlite", OutboxConfig(max_bytes=8192)) as ob:
        s = Sampler(SamplerConfig(enabled=True, rate=1.0, privacy="raw"), outbox=ob)
        s.offer(
            confidence=np.full(20, 0.3),
            inputs=np.zeros((20, 32), dtype=np.float32),
            request_ids=[f"r{i:07d}" for i in range(20)],
        )
        assert ob.bytes_of("sample") > 0
        for i in range(20):
            assert ob.put("telemetry", {"window": i, "pad": "x" * 300}) is not None
        stats = ob.stats()
        assert stats["dropped"]["sample"]["evicted"]["items"] > 0  # samples made room, counted
        assert "telemetry" not in stats["dropped"]
