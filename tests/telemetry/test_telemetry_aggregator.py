"""Aggregator around a real ONNX Runtime predictor: what it counts, when windows close, where they go."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.errors import InferenceError, TelemetryError
from edgefleet.protocol import ModelHealth, Resources
from edgefleet.telemetry import Aggregator, AggregatorConfig, Outbox, Window
from edgefleet.telemetry._aggregator import ResourceProbe


def _cfg(**kw):
    base = {"window_s": 60.0, "feature_window_s": 120.0, "resources": False}
    base.update(kw)
    return AggregatorConfig(**base)


def test_wraps_predictor_and_counts_what_the_model_said(
    onnx_predictor, digits_mlp, digits_split, digits_reference, clock
):
    model = onnx_predictor(digits_mlp)
    agg = Aggregator(
        model, reference=digits_reference, config=_cfg(), monotonic=clock.monotonic, wall=clock.wall
    )
    x = (digits_split.x_test[:200] / 16.0).astype(np.float32)
    outs = [agg.predict({"input": x[i : i + 2]}) for i in range(0, 200, 2)]
    probs = np.concatenate([o["probabilities"] for o in outs])
    w = agg.flush_window()
    assert w.requests == 100 and w.rows == 200 and w.errors == 0
    expected = np.bincount(probs.argmax(axis=1), minlength=10)
    assert w.classes == {str(i): int(c) for i, c in enumerate(expected) if c}
    assert w.confidence.count == 200
    assert w.mean_confidence == pytest.approx(probs.max(axis=1).mean(), rel=1e-6)
    assert w.latency_ms.count == 100 and w.latency_quantile(0.5) > 0
    assert w.feature_rows == 200 and w.feature_counts.sum(axis=1).tolist() == [200] * 64
    agg.close()
    assert model.closed


def test_errors_are_counted_and_reraised(onnx_predictor, digits_mlp, digits_reference, clock):
    agg = Aggregator(
        onnx_predictor(digits_mlp, fail_on=3),
        reference=digits_reference,
        config=_cfg(),
        monotonic=clock.monotonic,
        wall=clock.wall,
    )
    with pytest.raises(InferenceError):
        agg.predict({"input": np.zeros((3, 64), np.float32)})
    agg.predict({"input": np.zeros((1, 64), np.float32)})
    w = agg.flush_window()
    assert (w.requests, w.errors, w.rows) == (2, 1, 1)
    assert w.error_codes == {"inference": 1}
    assert w.latency_ms.count == 1  # latency only for answers


def test_windows_close_on_time_and_features_ride_on_the_feature_window(
    digits_predictor, digits_split, digits_reference, clock, tmp_path
):
    with Outbox(tmp_path / "outbox.sqlite") as ob:
        agg = Aggregator(
            digits_predictor,
            reference=digits_reference,
            config=_cfg(),
            outbox=ob,
            monotonic=clock.monotonic,
            wall=clock.wall,
            tags={"device_id": "d1"},
        )
        x = (digits_split.x_test / 16.0).astype(np.float32)
        for step in range(300):  # 300 s at 1 request per second
            clock.t = float(step)
            agg.predict({"input": x[step : step + 1]})
        clock.t = 300.0
        assert agg.tick() is not None
        items = ob.peek(100, kinds=["telemetry"])
        ws = [Window.from_dict(i.payload, now=clock.wall()) for i in items]
        assert [w.requests for w in ws] == [60] * 5
        assert all(w.tags == {"device_id": "d1"} for w in ws)
        with_features = [w for w in ws if w.feature_counts is not None]
        assert len(with_features) == 2  # every 120 s
        assert sum(w.feature_rows for w in with_features) == 240  # the last 60 s are still accumulating
        # drift is tested on the windows that carry features
        assert all(w.drift_score is not None for w in with_features)
        assert all(w.drift_score is None for w in ws if w.feature_counts is None)
        last = agg.flush_window()
        assert last is None or last.requests == 0


def test_record_from_outside_the_predict_call(digits_reference, clock):
    agg = Aggregator(
        None, reference=digits_reference, config=_cfg(), monotonic=clock.monotonic, wall=clock.wall
    )
    agg.record(
        np.zeros((2, 64)), {"probabilities": np.array([[0.1] * 9 + [0.1], [0.0] * 9 + [1.0]])}, latency_ms=4.0
    )
    agg.record(None, None, error="deadline_exceeded")
    agg.record(None, {"label": np.array(["cat", "dog", "cat"])}, latency_ms=1.0)
    w = agg.flush_window()
    assert w.requests == 3 and w.errors == 1 and w.rows == 5
    assert w.error_codes == {"deadline_exceeded": 1}
    assert w.classes["9"] == 1 and w.classes["cat"] == 2 and w.classes["dog"] == 1
    with pytest.raises(TelemetryError):
        agg.predict({"input": np.zeros((1, 64))})


def test_logits_are_softmaxed(clock):
    agg = Aggregator(None, config=_cfg(), monotonic=clock.monotonic, wall=clock.wall)
    agg.record(None, {"logits": np.array([[2.0, 0.0, -1.0]])}, latency_ms=1.0)
    w = agg.flush_window()
    p = np.exp([2.0, 0.0, -1.0])
    assert w.mean_confidence == pytest.approx(p.max() / p.sum(), rel=1e-6)


def test_runtime_prediction_tiers_and_events_are_counted(clock):
    rt = pytest.importorskip("edgefleet.runtime")
    out = rt.Prediction(
        {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])},
        tiers=("primary", "large", "large"),
        events=[rt.Event("escalated", "large", rows=2), rt.Event("fallback", "backup", "model_timeout")],
    )
    agg = Aggregator(None, config=_cfg(), monotonic=clock.monotonic, wall=clock.wall)
    agg.record(None, out, latency_ms=3.0)
    w = agg.flush_window()
    assert w.tiers == {"primary": 1, "large": 2}
    assert w.events == {"escalated": 2, "fallback": 1}


def test_telemetry_failure_never_breaks_inference(digits_predictor, digits_reference, clock, caplog):
    agg = Aggregator(
        digits_predictor,
        reference=digits_reference,
        config=_cfg(),
        monotonic=clock.monotonic,
        wall=clock.wall,
    )

    def broken_sink(_w):
        raise OSError("disk gone")

    agg.sink = broken_sink
    out = agg.predict({"input": np.zeros((1, 64), np.float32)})
    assert "probabilities" in out
    w = agg.flush_window()  # sink fails: logged, the window stays available
    assert w is not None and agg.drain_windows()[-1] is w
    assert "sink failed" in caplog.text


def test_mismatched_input_features_disable_histograms_with_a_warning(
    digits_predictor, digits_reference, clock, caplog
):
    agg = Aggregator(
        None, reference=digits_reference, config=_cfg(), monotonic=clock.monotonic, wall=clock.wall
    )
    agg.record({"input": np.zeros((1, 10))}, {"probabilities": np.array([[1.0, 0.0]])}, latency_ms=1.0)
    w = agg.flush_window()
    assert w.requests == 1 and w.feature_counts is None
    assert "do not match the reference" in caplog.text


def test_health_covers_windows_since_last_call(digits_predictor, digits_reference, clock):
    agg = Aggregator(
        digits_predictor,
        reference=digits_reference,
        config=_cfg(),
        monotonic=clock.monotonic,
        wall=clock.wall,
    )
    for step in range(90):
        clock.t = float(step)
        agg.predict({"input": np.zeros((1, 64), np.float32)})
    h = agg.health()
    assert isinstance(h, ModelHealth) and h.requests == 90
    clock.t = 95.0
    agg.predict({"input": np.zeros((1, 64), np.float32)})
    # the closed window [0, 60) was reported; the open one (60..95) is reported again, now with 31
    assert agg.health().requests == 31
    clock.t = 130.0
    agg.predict({"input": np.zeros((1, 64), np.float32)})
    assert agg.health().requests == 32  # window [60, 120) closed since, plus the new open one


def test_resource_probe_reads_psutil_and_mock_sensors(clock, mock_sensors):
    probe = ResourceProbe(sensors=mock_sensors(temperature_c=51.0, battery_percent=40.0))
    r = probe.read()
    assert r["rss_mb"] > 1 and r["cpu_percent"] >= 0
    assert r["temperature_c"] == 51.0 and r["battery_percent"] == 40.0
    assert isinstance(probe.resources(disk_path="/"), Resources)
    # without mock sensors, values are real readings or None (this machine may have none)
    plain = ResourceProbe().read()
    assert plain["temperature_c"] is None or -50 < plain["temperature_c"] < 150
    agg = Aggregator(None, config=AggregatorConfig(), probe=probe, monotonic=clock.monotonic, wall=clock.wall)
    agg.record(None, {"probabilities": np.array([[1.0]])}, latency_ms=1.0)
    w = agg.flush_window()
    assert w.resources["temperature_c"][1] == 51.0 and w.resources["battery_percent"][4] == 40.0


def test_real_runtime_engine(digits_mlp, digits_reference, clock):
    from edgefleet.runtime import OrtEngine  # in-tree: an import error fails the test, never skips it

    engine = OrtEngine(digits_mlp)
    agg = Aggregator(
        engine, reference=digits_reference, config=_cfg(), monotonic=clock.monotonic, wall=clock.wall
    )
    assert agg.metadata is engine.metadata
    agg.predict({"input": np.zeros((4, 64), np.float32)})
    w = agg.flush_window()
    assert w.rows == 4 and w.tiers.get(engine.metadata.tier) == 4
    agg.close()


def test_odd_labels_and_error_codes_still_make_valid_windows(clock):
    agg = Aggregator(None, config=_cfg(), monotonic=clock.monotonic, wall=clock.wall)
    agg.record(None, {"label": np.array(["stop sign", "ünïcode", "x" * 500])}, latency_ms=1.0)
    agg.record(None, None, error="deadline\nexceeded")
    for i in range(100):
        agg.record(None, None, error=f"code-{i}")
    w = agg.flush_window()
    back = Window.from_dict(w.to_dict(), now=clock.wall())
    assert back.classes["stop sign"] == 1 and back.classes["ünïcode"] == 1
    assert back.errors == 101 and back.error_codes["other"] > 0 and len(back.error_codes) <= 64
