"""Confidence escalation to a larger model or a real HTTP cloud endpoint, breaker, durable outbox."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgefleet.errors import DiskSpaceError
from edgefleet.runtime import BreakerConfig, CloudConfig, EscalationConfig, OrtEngine
from edgefleet.runtime._cascade import Cascade, confidence, resend_escalations
from edgefleet.runtime._cloud import CloudPredictor
from edgefleet.runtime._guards import Breaker
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import deadline_in


@pytest.fixture
def small(digits_mlp):
    return OrtEngine(digits_mlp, name="digits", version="1.0.0", tier="small")


@pytest.fixture
def large(big_mlp):
    return OrtEngine(big_mlp, tier="large")


@pytest.fixture
def outbox(tmp_path):
    from edgefleet.telemetry import Outbox

    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


def test_confidence_measures():
    p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(confidence(p, "max_prob"), [0.7, 1 / 3])
    np.testing.assert_allclose(confidence(p, "margin"), [0.5, 0.0], atol=1e-12)
    ent = confidence(p, "entropy")
    assert ent[1] == pytest.approx(1.0) and 0 < ent[0] < 1
    logits = np.log(p)
    np.testing.assert_allclose(confidence(logits, "max_prob", softmax=True), [0.7, 1 / 3])
    with pytest.raises(ValueError):
        confidence(p, "vibes")


def test_only_unsure_rows_go_to_the_large_model(small, large, doubles, x_test):
    rec = doubles.Recording(large)
    metrics = RuntimeMetrics()
    x = x_test[:200]
    conf = small.predict({"input": x})["probabilities"].max(axis=1)
    thr = float(np.quantile(conf, 0.1))  # about 10% of rows are below
    c = Cascade(small, rec, config=EscalationConfig(threshold=thr), metrics=metrics)
    out = c.predict({"input": x})
    unsure = np.flatnonzero(conf < thr)
    assert 0 < unsure.size < 200
    assert [len(call["input"]) for call in rec.calls] == [unsure.size]
    assert [i for i, t in enumerate(out.tiers) if t == "large"] == unsure.tolist()
    big = large.predict({"input": x[unsure]})
    np.testing.assert_allclose(out["probabilities"][unsure], big["probabilities"], rtol=1e-6)
    sure = np.setdiff1d(np.arange(200), unsure)
    want_small = small.predict({"input": x[sure]})["probabilities"]
    np.testing.assert_allclose(out["probabilities"][sure], want_small, rtol=1e-6)
    assert any(e.kind == "escalated" and e.rows == unsure.size for e in out.events)
    assert (
        f'edgefleet_runtime_escalations_total{{outcome="sent"}} {float(unsure.size)}'
        in metrics.exposition().decode()
    )


def test_per_request_flags(small, large, doubles, x_test):
    rec = doubles.Recording(large)
    c = Cascade(small, rec, config=EscalationConfig(threshold=1.1))  # everything is 'unsure'
    assert c.predict({"input": x_test[:3]}, escalate=False).tiers == ("small",) * 3
    assert rec.calls == []
    c2 = Cascade(small, rec, config=EscalationConfig(threshold=0.0))  # nothing is 'unsure'
    assert c2.predict({"input": x_test[:3]}).tiers == ("small",) * 3
    assert c2.predict({"input": x_test[:3]}, escalate=True).tiers == ("large",) * 3


def test_no_escalation_when_the_deadline_leaves_no_room(small, large, doubles, outbox, x_test):
    rec = doubles.Recording(large)
    c = Cascade(small, rec, config=EscalationConfig(threshold=1.1, min_budget_ms=500), outbox=outbox)
    out = c.predict({"input": x_test[:2]}, deadline=deadline_in(0.2))
    assert out.tiers == ("small", "small") and rec.calls == []
    kinds = [(e.kind, e.detail) for e in out.events]
    assert ("escalation_skipped", "deadline") in kinds and ("escalation_queued", "deadline") in kinds
    assert len(outbox) == 1


def test_escalation_to_a_real_cloud_endpoint(small, big_mlp, cloud, x_test):
    cp = CloudPredictor(cloud.url, small.metadata)
    c = Cascade(small, Breaker(cp), config=EscalationConfig(threshold=1.1))
    out = c.predict({"input": x_test[:5]})
    assert out.tiers == ("cloud",) * 5 and cloud.calls == 1
    want = OrtEngine(big_mlp).predict({"input": x_test[:5]})
    np.testing.assert_allclose(out["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
    assert out["label"].dtype == np.int64
    assert cloud.received[0]["preprocessed"] is True


def test_cloud_down_answers_locally_and_queues_durably_then_resends(
    small, big_mlp, dead_url, cloud, tmp_path, x_test
):
    from edgefleet.telemetry import Outbox

    path = tmp_path / "esc.sqlite"
    box = Outbox(path)
    metrics = RuntimeMetrics()
    c = Cascade(
        small,
        Breaker(CloudPredictor(dead_url, small.metadata)),
        config=EscalationConfig(threshold=1.1),
        outbox=box,
        metrics=metrics,
    )
    outs = [c.predict({"input": x_test[i : i + 1]}) for i in range(3)]
    assert all(o.tiers == ("small",) for o in outs)
    assert all(any(e.kind == "escalation_queued" for e in o.events) for o in outs)
    box.close()

    box = Outbox(path)  # a restart: the escalations are still there
    assert len(box) == 3
    item = box.peek(1)[0]
    assert item.kind == "escalation" and item.payload["model"] == "digits"
    np.testing.assert_allclose(item.payload["inputs"]["input"], x_test[:1], rtol=1e-6)
    assert 'outcome="queued"' in metrics.exposition().decode()

    sent = resend_escalations(box, CloudPredictor(cloud.url, small.metadata))
    assert sent == 3 and len(box) == 0 and cloud.calls == 3
    np.testing.assert_allclose(cloud.received[0]["inputs"]["input"], x_test[:1], rtol=1e-6)
    box.close()


def test_resend_stops_while_the_cloud_is_still_down(small, dead_url, outbox, x_test):
    outbox.put("escalation", {"inputs": {"input": x_test[:1].tolist()}, "dtypes": {"input": "float32"}})
    assert resend_escalations(outbox, CloudPredictor(dead_url, small.metadata)) == 0
    assert len(outbox) == 1  # nothing lost


@pytest.mark.parametrize("mode", ["slow", "garbage", "error", "wrong_shape"])
def test_misbehaving_cloud_never_fails_the_request(small, cloud, outbox, mode, x_test):
    cloud.mode, cloud.delay_s = mode, 1.5
    cp = CloudPredictor(cloud.url, small.metadata, config=CloudConfig(timeout_s=0.3))
    c = Cascade(small, Breaker(cp), config=EscalationConfig(threshold=1.1), outbox=outbox)
    t0 = time.monotonic()
    out = c.predict({"input": x_test[:2]})
    assert time.monotonic() - t0 < 2.0
    assert out.tiers == ("small", "small")
    np.testing.assert_allclose(out["probabilities"], small.predict({"input": x_test[:2]})["probabilities"])
    skipped = [e for e in out.events if e.kind == "escalation_skipped"]
    assert skipped and skipped[0].detail == "inference"
    assert len(outbox) == 1


def test_cloud_breaker_stops_calls_after_the_configured_failures(small, cloud, x_test):
    cloud.mode = "error"
    cp = CloudPredictor(cloud.url, small.metadata)
    br = Breaker(cp, BreakerConfig(failure_threshold=4, window=10, backoff_s=60))
    c = Cascade(small, br, config=EscalationConfig(threshold=1.1))
    for i in range(12):
        assert c.predict({"input": x_test[i : i + 1]}).tier == "small"
    assert cloud.calls == 4 and br.breaker.state == "open"
    last = c.predict({"input": x_test[:1]})
    assert [e.detail for e in last.events if e.kind == "escalation_skipped"] == ["circuit_open"]


def test_cloud_deadline_caps_the_http_timeout(small, cloud, x_test):
    cloud.mode, cloud.delay_s = "slow", 1.5
    cp = CloudPredictor(cloud.url, small.metadata, config=CloudConfig(timeout_s=10))
    c = Cascade(small, cp, config=EscalationConfig(threshold=1.1, min_budget_ms=10))
    t0 = time.monotonic()
    out = c.predict({"input": x_test[:1]}, deadline=deadline_in(0.3))
    assert time.monotonic() - t0 < 1.5 and out.tier == "small"


def test_outbox_failure_does_not_fail_the_request(small, dead_url, x_test):
    class FullDisk:  # fault-injecting outbox double: the disk is full
        def put(self, kind, payload, priority=None):
            raise DiskSpaceError("disk full")

    metrics = RuntimeMetrics()
    c = Cascade(
        small,
        CloudPredictor(dead_url, small.metadata),
        config=EscalationConfig(threshold=1.1),
        outbox=FullDisk(),
        metrics=metrics,
    )
    assert c.predict({"input": x_test[:1]}).tier == "small"
    assert 'outcome="dropped"' in metrics.exposition().decode()
