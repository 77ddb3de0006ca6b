"""Fleet-side library: outliers, alerts, and the retraining trigger with real hooks."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from edgefleet.errors import ConflictError, NotFoundError, TelemetryError
from edgefleet.telemetry import (
    Aggregator,
    AggregatorConfig,
    AlertRules,
    CommandHook,
    DriftReport,
    WebhookHook,
    detect_outliers,
    evaluate_alerts,
)
from edgefleet.telemetry._fleet import RetrainTrigger, merge_by


def _device_window(dev, cls, latency_ms, confidence, *, n=100, errors=0, seed=0):
    rng = np.random.default_rng(seed)
    agg = Aggregator(
        None,
        config=AggregatorConfig(resources=False),
        tags={"device_id": dev, "device_class": cls, "region": "eu"},
    )
    for _ in range(n):
        c = float(np.clip(confidence + rng.normal(0, 0.01), 0.5, 1.0))
        agg.record(
            None,
            {"probabilities": np.array([[c, 1 - c]])},
            latency_ms=float(latency_ms * rng.lognormal(0, 0.05)),
        )
    for _ in range(errors):
        agg.record(None, None, error="inference")
    return agg.flush_window()


@pytest.fixture
def fleet():
    ws = {f"cpu-{i}": _device_window(f"cpu-{i}", "cpu", 10.0, 0.95, seed=i) for i in range(8)}
    ws["cpu-slow"] = _device_window("cpu-slow", "cpu", 30.0, 0.95, seed=99)
    ws["cpu-unsure"] = _device_window("cpu-unsure", "cpu", 10.0, 0.7, seed=98)
    # another class is legitimately slower: not an outlier against its own class
    ws.update({f"pi-{i}": _device_window(f"pi-{i}", "pi", 40.0, 0.95, seed=50 + i) for i in range(6)})
    ws["pi-err"] = _device_window("pi-err", "pi", 40.0, 0.95, errors=30, seed=77)
    return ws


def test_outliers_are_judged_against_their_class(fleet):
    out = detect_outliers(fleet)
    found = {(o.device_id, o.metric) for o in out}
    assert ("cpu-slow", "latency_p95_ms") in found
    assert ("cpu-unsure", "mean_confidence") in found
    assert ("pi-err", "error_rate") in found
    assert not any(d.startswith("pi-") and m == "latency_p95_ms" for d, m in found)
    assert len(found) == 3
    # the same from raw windows tagged with device ids
    assert {(o.device_id, o.metric) for o in detect_outliers(list(fleet.values()))} == found
    with pytest.raises(TelemetryError):
        detect_outliers(fleet, metrics=["nonsense"])


def test_small_groups_are_not_judged(fleet):
    few = {k: v for k, v in fleet.items() if k in ("cpu-0", "cpu-1", "cpu-slow")}
    assert detect_outliers(few) == []


def test_merge_by_device(fleet):
    ws = list(fleet.values())
    merged = merge_by(ws + ws, ["device_class"])
    assert merged[("cpu",)].requests == 2 * sum(fleet[f"cpu-{i}"].requests for i in range(8)) + 2 * (
        fleet["cpu-slow"].requests + fleet["cpu-unsure"].requests
    )


def test_alert_rules(fleet):
    drifted = DriftReport(score=0.95, drifted=True, rows=500, reference_id="0" * 16)
    quiet = DriftReport(score=0.0, drifted=False, rows=500, reference_id="0" * 16)
    alerts = evaluate_alerts(
        device_windows=fleet,
        group_drift={("cpu", "eu"): quiet, ("cpu", "apac"): drifted},
        last_seen={"cpu-0": 1000.0, "ghost": 0.0},
        now=1000.0 + 60,
        rules=AlertRules(silent_after_s=600),
    )
    by_rule = {}
    for a in alerts:
        by_rule.setdefault(a.rule, []).append(a)
    assert [a.subject for a in by_rule["drift"]] == [{"device_class": "cpu", "region": "apac"}]
    assert by_rule["drift"][0].severity == "critical"
    assert [a.subject["device_id"] for a in by_rule["error_rate"]] == ["pi-err"]
    assert [a.subject["device_id"] for a in by_rule["silent"]] == ["ghost"]
    assert {a.subject["device_id"] for a in by_rule["outlier"]} == {"cpu-slow", "cpu-unsure", "pi-err"}
    assert len({a.key for a in alerts}) == len(alerts)  # stable, distinct keys for deduplication
    json.dumps([a.to_dict() for a in alerts])


def _drift_alert(score=0.9):
    rep = DriftReport(score=score, drifted=True, rows=500, reference_id="0" * 16)
    return evaluate_alerts(group_drift={("cpu", "eu"): rep})


def test_retrain_needs_consecutive_alerts_and_approval():
    fired = []
    t = [0.0]
    trig = RetrainTrigger(
        fired.append, model="digits", min_consecutive=3, cooldown_s=3600, clock=lambda: t[0]
    )
    assert trig.consider(_drift_alert()) == []
    assert trig.consider(_drift_alert()) == []
    assert trig.consider([]) == []  # streak broken
    for _ in range(2):
        assert trig.consider(_drift_alert()) == []
    (req,) = trig.consider(_drift_alert())
    assert req.status == "pending" and fired == [] and trig.pending == [req]
    assert trig.consider(_drift_alert()) == []  # cooldown
    trig.approve(req.id, by="alice")
    assert req.status == "fired" and req.decided_by == "alice" and fired == [req]
    with pytest.raises(ConflictError):
        trig.approve(req.id, by="bob")
    with pytest.raises(NotFoundError):
        trig.reject("nope", by="bob")
    t[0] = 7200.0
    (again,) = trig.consider(_drift_alert())
    trig.reject(again.id, by="bob")
    assert again.status == "rejected" and len(fired) == 1


def test_retrain_without_approval_fires_at_once_and_records_failures():
    def boom(_req):
        raise RuntimeError("ci is down")

    trig = RetrainTrigger(boom, model="digits", require_approval=False, min_consecutive=1)
    (req,) = trig.consider(_drift_alert())
    assert req.status == "failed" and "ci is down" in req.error


def test_command_hook_gets_the_request_on_stdin(tmp_path):
    out = tmp_path / "got.json"
    script = f"import sys, pathlib; pathlib.Path({str(out)!r}).write_text(sys.stdin.read())"
    trig = RetrainTrigger(CommandHook([sys.executable, "-c", script]), model="digits", min_consecutive=1)
    (req,) = trig.consider(_drift_alert())
    trig.approve(req.id, by="ops")
    assert req.status == "fired" and json.loads(out.read_text())["id"] == req.id
    bad = RetrainTrigger(
        CommandHook([sys.executable, "-c", "raise SystemExit(3)"]), model="m", min_consecutive=1
    )
    (r2,) = bad.consider(_drift_alert())
    bad.approve(r2.id, by="ops")
    assert r2.status == "failed" and "exited 3" in r2.error


def test_webhook_hook_posts_to_a_real_server():
    got = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(202 if len(got) == 1 else 500)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        hook = WebhookHook(f"http://127.0.0.1:{srv.server_port}/retrain")
        trig = RetrainTrigger(hook, model="digits", min_consecutive=1, cooldown_s=0)
        (req,) = trig.consider(_drift_alert())
        trig.approve(req.id, by="ops")
        assert req.status == "fired" and got[0]["model"] == "digits"
        (req2,) = trig.consider(_drift_alert())
        trig.approve(req2.id, by="ops")
        assert req2.status == "failed" and "500" in req2.error
    finally:
        srv.shutdown()
