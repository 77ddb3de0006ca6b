"""Alerts over real telemetry (drift, outliers, silent devices), their events, Prometheus figures, and the
retraining trigger with a real webhook receiver on 127.0.0.1 and a real command."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fleettools import build_fleet, shared_repo
from servertools import GOOD, Harness, make_harness

SMALL = [("cpu-eu-1", "cpu", "eu", None), ("cpu-us-1", "cpu", "us", "drifted")]
DRIFT_KEY = "drift:digits@1.0.0/cpu/us"


@pytest.fixture
def small(tmp_path, tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split):
    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    client, clock = make_harness(tmp_path, repo_dir=repo)
    with client:
        yield build_fleet(
            Harness(client, clock), repo, digits_mlp, digits_split, layout=SMALL, second_rollout=False
        )


class Receiver:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length", 0))
                outer.bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(outer.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/retrain"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _evaluate(f, headers=None):
    r = f.h.c.post("/v1/fleet/alerts/evaluate", headers=headers or f.h.token("deployer"))
    assert r.status_code == 200, r.text
    return r.json()


def _configure(f, **changes):
    view = f.h.c.app.state.fleet
    view.config = view.config.model_copy(update=changes)
    return view


def test_alerts_are_raised_once_recorded_as_events_and_resolved(small):
    f, c, admin = small, small.h.c, small.h.admin
    first = _evaluate(f)
    assert DRIFT_KEY in first["raised"]
    assert not any(k.startswith("drift:") and k != DRIFT_KEY for k in first["raised"])
    alerts = {a["key"]: a for a in c.get("/v1/fleet/alerts", headers=admin).json()}
    a = alerts[DRIFT_KEY]
    assert a["rule"] == "drift" and a["state"] == "open" and a["evaluations"] == 1
    assert a["subject"] == {"release": "digits@1.0.0", "device_class": "cpu", "region": "us"}
    assert a["value"] >= 0.2 and "us" in a["message"]

    second = _evaluate(f)
    assert second["raised"] == [] and second["resolved"] == []
    alerts = {a["key"]: a for a in c.get("/v1/fleet/alerts", headers=admin).json()}
    assert alerts[DRIFT_KEY]["evaluations"] == 2
    events = c.get("/v1/fleet/events", params={"prefix": "alert."}, headers=admin).json()
    raised = [e for e in events if e["action"] == "alert.raised" and e["details"]["key"] == DRIFT_KEY]
    assert len(raised) == 1 and raised[0]["actor"] == "fleet" and raised[0]["message"]

    # an hour later nothing was uploaded and nobody reported: drift resolves, both devices are silent
    f.h.clock.advance(3700)
    later = _evaluate(f)
    assert DRIFT_KEY in later["resolved"]
    assert {f"silent:{f.id(n)}" for n, *_ in SMALL} <= set(later["raised"])
    for d in f.devices.values():
        f.h.beat(d, active=d["v1"], health=GOOD)
    back = _evaluate(f)
    assert {f"silent:{f.id(n)}" for n, *_ in SMALL} <= set(back["resolved"])
    assert c.get("/v1/fleet/alerts", headers=admin).json() == []
    resolved = c.get("/v1/fleet/alerts", params={"state": "resolved"}, headers=admin).json()
    assert {a["key"] for a in resolved} >= {DRIFT_KEY}
    events = c.get("/v1/fleet/events", params={"prefix": "alert.resolved"}, headers=admin).json()
    assert any(e["details"]["key"] == DRIFT_KEY for e in events)


def test_silent_means_not_seen_for_n_poll_intervals(small):
    f = small
    view = f.h.c.app.state.fleet
    limit = view.config.silent_after_polls * f.h.ctx.config.poll_interval_s
    quiet = f.devices["cpu-eu-1"]
    f.h.clock.advance(limit - 30)
    f.h.beat(f.devices["cpu-us-1"], active=f.devices["cpu-us-1"]["v1"], health=GOOD)
    assert not any(k.startswith("silent:") for k in _evaluate(f)["raised"])
    f.h.clock.advance(60)
    raised = _evaluate(f)["raised"]
    assert f"silent:{quiet['device_id']}" in raised
    assert f"silent:{f.id('cpu-us-1')}" not in raised


def test_metrics_expose_fleet_devices_rollouts_gates_telemetry_drift_and_alerts(small):
    from prometheus_client.parser import text_string_to_metric_families

    f, c = small, small.h.c
    f.h.register("1.1.0")
    ro = f.h.rollout("1.1.0", waves=[50, 100], soak_s=3600, gates={"min_devices": 1, "min_requests": 10})
    _evaluate(f)
    r = c.get("/metrics", headers=f.h.token("viewer"))
    assert r.status_code == 200
    samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)

    def one(name, **labels):
        got = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(got) == 1, (name, labels, samples.get(name))
        return got[0]

    assert one("edgefleet_fleet_up") == 1
    assert sum(s.value for s in samples["edgefleet_fleet_devices"]) == len(SMALL)
    assert (
        one(
            "edgefleet_fleet_devices",
            release="digits@1.0.0",
            device_class="cpu",
            region="us",
            status="online",
        )
        == 1
    )
    assert one("edgefleet_fleet_devices_online") == len(SMALL)
    assert one("edgefleet_fleet_rollouts", state="completed") == 1
    assert one("edgefleet_fleet_rollouts", state="running") == 1
    assert one("edgefleet_fleet_rollout_wave", rollout=ro["id"]) == 1
    assert one("edgefleet_fleet_rollout_gate_threshold", rollout=ro["id"], gate="golden_pass_rate") == 1.0
    assert one("edgefleet_fleet_rollout_gate_status", rollout=ro["id"], gate="error_rate", status="wait") in (
        0,
        1,
    )
    assert one("edgefleet_fleet_telemetry_windows", tier="raw") == sum(len(v) for v in f.windows.values())
    assert one("edgefleet_fleet_telemetry_batches") == len(SMALL)
    assert one("edgefleet_fleet_drift_score", release="digits@1.0.0", device_class="cpu", region="us") >= 0.2
    assert one("edgefleet_fleet_drifted", release="digits@1.0.0", device_class="cpu", region="us") == 1
    assert one("edgefleet_fleet_drifted", release="digits@1.0.0", device_class="cpu", region="eu") == 0
    assert sum(s.value for s in samples["edgefleet_fleet_alerts_open"] if s.labels["rule"] == "drift") == 1
    # the control plane's own counters are still served from the same registry
    assert one("edgefleet_telemetry_batches_total") == len(SMALL)


def test_retraining_waits_for_approval_then_fires_the_webhook(small, receiver):
    f, c = small, small.h.c
    _configure(f, retrain_webhook_url=receiver.url, retrain_min_consecutive=2)
    assert _evaluate(f)["retrain_requests"] == []
    created = _evaluate(f)["retrain_requests"]
    assert len(created) == 1
    assert _evaluate(f)["retrain_requests"] == []  # cooldown: one request per alert and day
    reqs = c.get("/v1/fleet/retrain-requests", headers=f.h.token("viewer")).json()
    assert [(r["id"], r["status"], r["model"]) for r in reqs] == [(created[0], "pending", "digits")]
    assert reqs[0]["subject"]["region"] == "us" and reqs[0]["alert_key"] == DRIFT_KEY
    time.sleep(0.2)
    assert receiver.bodies == [], "nothing fires before a human approves"

    path = f"/v1/fleet/retrain-requests/{created[0]}/approve"
    assert c.post(path, headers=f.h.token("viewer")).status_code == 403
    assert c.post(path, headers=f.h.token("deployer")).status_code == 403
    r = c.post(path, headers=f.h.admin)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "fired" and done["decided_by"] == "operator:admin" and done["error"] is None
    assert len(receiver.bodies) == 1
    sent = receiver.bodies[0]
    assert sent["id"] == created[0] and sent["model"] == "digits" and sent["status"] == "approved"
    assert sent["subject"] == {"release": "digits@1.0.0", "device_class": "cpu", "region": "us"}
    assert c.post(path, headers=f.h.admin).status_code == 409
    assert c.post(f"/v1/fleet/retrain-requests/{created[0]}/reject", headers=f.h.admin).status_code == 409
    actions = [
        e["action"]
        for e in c.get("/v1/fleet/events", params={"prefix": "retrain."}, headers=f.h.admin).json()
    ]
    assert actions[:3] == ["retrain.fired", "retrain.approved", "retrain.requested"]


def test_a_failing_webhook_leaves_the_request_failed_with_the_reason(small):
    f = small
    bad = Receiver(status=500)
    try:
        _configure(f, retrain_webhook_url=bad.url, retrain_min_consecutive=1)
        (rid,) = _evaluate(f)["retrain_requests"]
        r = f.h.c.post(f"/v1/fleet/retrain-requests/{rid}/approve", headers=f.h.admin)
        assert r.status_code == 200
        assert r.json()["status"] == "failed" and "500" in r.json()["error"]
        assert len(bad.bodies) == 1
    finally:
        bad.close()


def test_a_rejected_request_never_runs_the_hook(small, receiver):
    f = small
    _configure(f, retrain_webhook_url=receiver.url, retrain_min_consecutive=1)
    (rid,) = _evaluate(f)["retrain_requests"]
    r = f.h.c.post(f"/v1/fleet/retrain-requests/{rid}/reject", headers=f.h.admin)
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert f.h.c.post(f"/v1/fleet/retrain-requests/{rid}/approve", headers=f.h.admin).status_code == 409
    assert receiver.bodies == []


def test_without_approval_the_command_runs_at_once(small, tmp_path):
    f = small
    out = tmp_path / "retrain-request.json"
    cmd = f'"{sys.executable}" -c "import sys, pathlib; pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())" "{out}"'
    _configure(f, retrain_command=cmd, retrain_require_approval=False, retrain_min_consecutive=1)
    res = _evaluate(f)
    assert len(res["retrain_requests"]) == 1
    assert [x["status"] for x in res["fired"]] == ["fired"]
    sent = json.loads(out.read_text())
    assert sent["id"] == res["retrain_requests"][0] and sent["decided_by"] == "fleet"


def test_retraining_hook_configuration_is_checked(small):
    from pydantic import ValidationError as PydanticValidationError

    from edgefleet.errors import ConfigError
    from edgefleet.server._fleet import FleetView
    from edgefleet.server._fleet_config import FleetConfig

    with pytest.raises(PydanticValidationError, match="http"):
        FleetConfig(retrain_webhook_url="ftp://example/retrain")
    with pytest.raises(ConfigError) as e:
        FleetView(
            small.h.ctx, FleetConfig(retrain_webhook_url="http://127.0.0.1:9/x", retrain_command="true")
        )
    assert e.value.hint


def test_the_background_loop_evaluates_alerts(
    tmp_path, tmp_path_factory, monkeypatch, digits_mlp, digits_mlp_v2, digits_split
):
    from fastapi.testclient import TestClient
    from servertools import Clock

    from edgefleet.server import ServerConfig, create_app

    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    monkeypatch.setenv("EDGEFLEET_FLEET_ALERT_INTERVAL_S", "0.2")
    clock = Clock()
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=repo,
        keys_dir=tmp_path / "no-keys",
        engine_enabled=True,
        engine_tick_s=0.5,
    )
    with TestClient(create_app(cfg, clock=clock)) as c:
        h = Harness(c, clock)
        dev = h.enroll("cpu", tags={"region": "eu"})
        clock.advance(3600)
        deadline = time.monotonic() + 20
        keys: list[str] = []
        while time.monotonic() < deadline:
            keys = [a["key"] for a in c.get("/v1/fleet/alerts", headers=h.admin).json()]
            if f"silent:{dev['device_id']}" in keys:
                break
            time.sleep(0.2)
        assert f"silent:{dev['device_id']}" in keys


def test_metrics_name_filter_skips_the_fleet_read_and_bad_filters_are_refused(small, monkeypatch):
    from prometheus_client.parser import text_string_to_metric_families

    from edgefleet.server._fleet_metrics import FleetCollector

    f, c = small, small.h.c
    viewer = f.h.token("viewer")
    reads = []
    real = FleetCollector._read
    monkeypatch.setattr(FleetCollector, "_read", lambda self: reads.append(1) or real(self))

    def names(params=None):
        r = c.get("/metrics", params=params, headers=viewer)
        assert r.status_code == 200, r.text
        return {fam.name for fam in text_string_to_metric_families(r.text)}

    asked = {"name[]": ["process_cpu_seconds_total", "edgefleet_http_request_duration_seconds_bucket"]}
    got = names(asked)
    assert reads == [] and not any(n.startswith("edgefleet_fleet_") for n in got)
    assert {"process_cpu_seconds", "edgefleet_http_request_duration_seconds"} <= got
    # a fleet family asked for by name is read and served; everything unfiltered still has it
    assert "edgefleet_fleet_devices" in names({"name[]": ["edgefleet_fleet_devices"]}) and len(reads) == 1
    assert "edgefleet_fleet_devices" in names() and len(reads) == 2
    r = c.get("/metrics", params={"name[]": ["x"] * 65}, headers=viewer)
    assert r.status_code == 422 and "at most 64" in r.json()["message"], r.text
