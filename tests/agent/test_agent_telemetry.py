"""The agent's telemetry: per-bundle aggregator, drift in heartbeats, windows through the durable outbox."""

from __future__ import annotations

import json

import numpy as np
import pytest
from agenttools import GOLDEN, PRE, run_until


@pytest.fixture(scope="module")
def wide_reference_bundle(tmp_path_factory, digits_split, digits_mlp):
    """digits 3.0.0 whose reference.json describes the training set (the shared bundles' reference is
    their 16 golden digits: too few for the class test to accept a clean live mix)."""
    from edgefleet.bundle import create_bundle

    d = tmp_path_factory.mktemp("telemetry-bundle")
    return create_bundle(
        digits_mlp,
        d / "digits-3.0.0.tar",
        name="digits",
        version="3.0.0",
        variant="cpu",
        inputs_raw=digits_split.x_test[:GOLDEN],
        reference_raw=digits_split.x_train,
        preprocess=PRE,
    )


def _agent(world, **kw):
    """An agent whose own RuntimeHost is built from the config (short windows, uploads every pass)."""
    from edgefleet.agent import Agent

    cfg = world.config(**({"telemetry_window_s": 0.2, "telemetry_interval_s": 0.01} | kw))
    a = Agent(cfg)
    world.agents.append(a)
    a.start()
    return a


def _traffic(a, x: np.ndarray, batch: int = 20) -> int:
    for lo in range(0, len(x), batch):
        a.host.predict_result(x[lo : lo + batch])
    return len(x)


def _windows(world) -> list[dict]:
    return [w for b in world.standin.telemetry for w in b.get("windows", [])]


def _queued_telemetry(a) -> int:
    return len(a._outbox.peek(limit=10_000, kinds=["telemetry"]))


def test_drift_in_heartbeats_is_higher_for_shifted_inputs(world, digits_split, wide_reference_bundle):
    world.repository().publish(wide_reference_bundle)
    # windows close only when the test says (final=True): with the helper's 0.2 s windows a busy machine
    # split the 300 rows into windows under the drift test's min_rows, and both scores came out 0.0
    a = _agent(world, telemetry_window_s=3600)
    world.install(a, "3.0.0")
    assert a.host.aggregator is not None and a.host.aggregator.reference is not None
    x = digits_split.x_test[:300]

    _traffic(a, x)
    a._collect_telemetry(final=True)  # close the window of clean traffic now
    a.run_once()
    clean = world.standin.last_heartbeat()["health"]["drift_score"]
    assert clean is not None

    rng = np.random.default_rng(0)
    noisy = np.clip(x + rng.normal(0, 6, x.shape), 0, 16).astype(np.float32)
    _traffic(a, noisy)
    a._collect_telemetry(final=True)
    a.run_once()
    shifted = world.standin.last_heartbeat()["health"]["drift_score"]
    assert shifted is not None
    assert clean < 0.5  # held-out clean digits look like the training set
    assert shifted > clean
    assert shifted > 0.5  # heavy noise is plainly out of distribution


def test_windows_reach_the_telemetry_endpoint(world, digits_split):
    from edgefleet.telemetry import Window

    a = _agent(world)
    world.install(a, "1.0.0")
    n = _traffic(a, digits_split.x_test[:120])
    run_until(a, lambda: sum(w["rows"] for w in _windows(world)) >= n, timeout=20)
    ws = [Window.from_dict(w) for w in _windows(world)]
    assert sum(w.rows for w in ws) == n and sum(w.requests for w in ws) == n // 20
    assert all(w.tags["model"] == "digits" and w.tags["version"] == "1.0.0" for w in ws)
    assert all(w.tags["device_id"] == a.creds.device_id for w in ws)
    assert any(w.feature_counts is not None for w in ws)
    assert _queued_telemetry(a) == 0  # acked after the 2xx


def test_windows_wait_in_the_outbox_while_the_endpoint_is_down(world, digits_split):
    a = _agent(world)
    world.install(a, "1.0.0")
    world.standin.telemetry_status = 503
    n = _traffic(a, digits_split.x_test[:100])
    a._collect_telemetry(final=True)
    for _ in range(3):
        a.run_once()
    assert _queued_telemetry(a) >= 1
    assert sum(w["rows"] for w in _windows(world)) == 0
    # the agent keeps heartbeating meanwhile (telemetry failures are not server failures)
    assert a.failures == 0

    a.close()  # a restart in between: the queue is on disk
    world.agents.remove(a)
    world.standin.telemetry_status = 200
    b = _agent(world)
    run_until(b, lambda: sum(w["rows"] for w in _windows(world)) >= n, timeout=20)
    assert sum(w["rows"] for w in _windows(world)) == n
    assert _queued_telemetry(b) == 0


def test_swap_closes_the_old_models_window(world, digits_split):
    a = _agent(world, telemetry_interval_s=3600)  # nothing uploaded: inspect the outbox
    world.install(a, "1.0.0")
    _traffic(a, digits_split.x_test[:40])
    world.install(a, "1.1.0")
    a._collect_telemetry()
    docs = [
        i.payload if isinstance(i.payload, dict) else json.loads(i.payload)
        for i in a._outbox.peek(limit=1000, kinds=["telemetry"])
    ]
    assert sum(d["rows"] for d in docs if d["tags"]["version"] == "1.0.0") >= 40


def test_real_control_plane_stores_the_agents_windows(world, digits_split, tmp_path):
    """The agent's upload, as sent, is accepted and stored by the real server (edgefleet.server)."""
    import dataclasses

    from fastapi.testclient import TestClient

    from edgefleet.agent._director import DirectorClient
    from edgefleet.server import ServerConfig, create_app

    app = create_app(
        ServerConfig(data_dir=tmp_path / "server", keys_dir=tmp_path / "no-keys", engine_enabled=False)
    )
    tc = TestClient(app)
    admin = {"Authorization": "Bearer " + app.state.ctx.config.admin_token_path.read_text().strip()}
    r = tc.post("/v1/enrollment-tokens", json={"tags": {}}, headers=admin)
    assert r.status_code == 201, r.text
    hw = {"arch": "x86_64", "cores": 2, "ram_mb": 4096, "disk_free_mb": 10_000, "device_class": "cpu"}
    r = tc.post("/v1/enroll", json={"token": r.json()["token"], "hardware": hw})
    assert r.status_code == 200, r.text
    dev = r.json()

    a = _agent(world, telemetry_interval_s=3600)  # installs from the stand-in, uploads by hand below
    world.install(a, "1.0.0")
    n = _traffic(a, digits_split.x_test[:60])
    a._collect_telemetry(final=True)
    a.director.close()
    a.director = DirectorClient("http://testserver", token=dev["device_token"], transport=tc._transport)
    a.creds = dataclasses.replace(a.creds, device_id=dev["device_id"], device_token=dev["device_token"])
    a._telemetry_sent_t = float("-inf")  # due now
    a._upload_events()
    assert len(a._outbox.peek(kinds=["telemetry"])) == 0  # the server answered 2xx: acked
    r = tc.get(f"/v1/devices/{dev['device_id']}/telemetry", headers=admin)
    assert r.status_code == 200, r.text
    stored = [w["window"] for w in r.json()]
    assert sum(w["rows"] for w in stored) == n
