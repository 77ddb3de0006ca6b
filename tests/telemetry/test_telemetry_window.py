"""Windows: exact merges in any order, lossless round trips, and clear rejection of bad windows."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from edgefleet.errors import PayloadTooLargeError, SchemaVersionError, TelemetryError, ValidationError
from edgefleet.protocol import ModelHealth
from edgefleet.telemetry import Aggregator, AggregatorConfig, Reference, Window, WindowConfig, merge_windows

NOW = 1_700_000_000.0


def _agg(reference, **kw):
    cfg = AggregatorConfig(window_s=1e9, feature_window_s=0, resources=False, drift_on_close=False)
    t = iter(range(10**9))
    return Aggregator(
        None, reference=reference, config=cfg, wall=lambda: NOW + next(t) * 0.001, monotonic=lambda: 0.0, **kw
    )


def _window_of(reference, x, probs, latencies, tags=None, errors=0):
    agg = _agg(reference, tags=tags)
    for i in range(len(x)):
        agg.record(
            {"input": x[i : i + 1]}, {"probabilities": probs[i : i + 1]}, latency_ms=float(latencies[i])
        )
    for _ in range(errors):
        agg.record({"input": x[:1]}, None, error="model_timeout")
    return agg.flush_window()


@pytest.fixture(scope="module")
def parts(digits_split, digits_predictor, digits_reference):
    rng = np.random.default_rng(7)
    x = digits_split.x_test / 16.0
    probs = digits_predictor.predict({"input": x})["probabilities"]
    lat = rng.lognormal(0.5, 0.6, len(x))
    cuts = [0, 130, 300, 420, len(x)]
    ws = [
        _window_of(
            digits_reference,
            x[a:b],
            probs[a:b],
            lat[a:b],
            tags={"device_class": "cpu", "dev": str(i)},
            errors=i,
        )
        for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))
    ]
    whole = _window_of(digits_reference, x, probs, lat, errors=0)
    return ws, whole, x, probs


def _exact(d):
    """The parts of a window dict that must match exactly (floats in sketch sums may differ in the ulp)."""
    d = copy.deepcopy(d)
    for k in ("latency_ms", "confidence"):
        d[k].pop("s", None)
    for k in ("start", "end", "tags", "windows", "errors", "requests", "error_codes"):
        d.pop(k, None)
    return d


def test_merge_is_exact_and_order_free(parts):
    ws, whole, _, _ = parts
    a, b, c, d = ws
    left = merge_windows([merge_windows([merge_windows([a, b]), c]), d])
    right = merge_windows([a, merge_windows([b, merge_windows([c, d])])])
    shuffled = merge_windows([d, b, a, c])
    for m in (left, right, shuffled):
        assert _exact(m.to_dict()) == _exact(whole.to_dict())
        assert m.latency_ms.sum == pytest.approx(whole.latency_ms.sum, rel=1e-9)
        assert m.windows == 4 and m.requests == whole.requests + 6 and m.errors == 6
        assert m.error_codes == {"model_timeout": 6}
    # inputs untouched
    assert a.windows == 1 and a.rows == 130
    # the tag all parts share survives, the differing one does not
    assert left.tags == {"device_class": "cpu"}
    # quantiles of the merge equal those of the whole
    assert left.latency_quantile(0.95) == whole.latency_quantile(0.95)


def test_feature_histograms_match_numpy(parts, digits_reference):
    from edgefleet.bundle import summarize_features

    _, whole, x, _ = parts
    ref = Reference.from_dict(digits_reference)
    _, f = summarize_features(x)
    for j in (0, 10, 20, 36, 63):
        edges = ref.edges[j]
        expected, _ = np.histogram(f[:, j][(f[:, j] >= edges[0]) & (f[:, j] <= edges[-1])], bins=edges)
        row = whole.feature_counts[j]
        assert row[1 : len(edges)].tolist() == expected.tolist()
        assert row[0] == int((f[:, j] < edges[0]).sum()) and row[len(edges)] == int(
            (f[:, j] > edges[-1]).sum()
        )


def test_round_trip_is_lossless(parts):
    for w in parts[0] + [parts[1]]:
        d = w.to_dict()
        back = Window.from_dict(json.loads(json.dumps(d)), now=NOW)
        assert back.to_dict() == d
        assert back.latency_quantile(0.5) == w.latency_quantile(0.5)
        back2 = Window.from_json(w.to_json(), now=NOW)
        assert back2.to_dict() == d


def test_health_is_model_health(parts):
    ws, _, _, _ = parts
    h = ws[1].health()
    assert isinstance(h, ModelHealth)
    assert h.requests == ws[1].requests and h.errors == 1
    assert 0 < h.latency_p50_ms <= h.latency_p95_ms
    assert 0.5 < h.mean_confidence <= 1.0


def _base(parts):
    return parts[0][1].to_dict()


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d.pop("requests"), "missing field"),
        (lambda d: d.update(requests=-1), "requests"),
        (lambda d: d.update(requests=True), "requests"),
        (lambda d: d.update(rows="600"), "rows"),
        (lambda d: d.update(start=float("nan")), "start"),
        (lambda d: d.update(hacker=1), "unknown fields"),
        (lambda d: d.update(errors=d["requests"] + 1), "errors"),
        (lambda d: d["classes"].update({"0": 10**6}), "class counts"),
        (lambda d: d["confidence_hist"].__setitem__(0, d["confidence_hist"][0] + 1), "disagree"),
        (lambda d: d["latency_ms"]["p"]["c"].append(5), "bins sum"),
        (lambda d: d["latency_ms"].update(a=0.05), "relative accuracy"),
        (lambda d: d["features"]["counts"][3].append(1), "sums to"),
        (lambda d: d["features"].update(ref="../../etc"), "16 hex"),
        (lambda d: d.update(end=d["start"] - 10), "before it starts"),
        (lambda d: d.update(v=0), "schema version"),
        (lambda d: d.update(tags={"a b": "x"}), "tag"),
        (lambda d: d.update(resources={"gpu": [1, 1, 1, 1, 1]}), "resources"),
        (lambda d: d.update(drift_score=1.5), "drift_score"),
    ],
)
def test_malformed_windows_are_rejected_clearly(parts, mutate, needle):
    d = _base(parts)
    mutate(d)
    before = copy.deepcopy(d)
    with pytest.raises(ValidationError) as e:
        Window.from_dict(d, now=NOW)
    assert needle in e.value.message and e.value.hint
    assert d == before  # the input is not changed


def test_future_and_stale_windows_are_rejected(parts):
    d = _base(parts)
    with pytest.raises(ValidationError, match="future") as e:
        Window.from_dict(d, now=d["end"] - 3600)
    assert "NTP" in e.value.hint
    with pytest.raises(ValidationError, match="ago"):
        Window.from_dict(d, now=d["end"] + 30 * 86_400)
    # within tolerance, and stored windows re-read without the time check
    Window.from_dict(d, now=d["end"] - 60)
    Window.from_dict(d, now=d["end"] + 365 * 86_400, check_time=False)


def test_oversized_windows_are_rejected_before_parsing(parts):
    d = _base(parts)
    cfg = WindowConfig(max_bytes=2048, max_classes=5)
    with pytest.raises(PayloadTooLargeError):
        Window.from_json(b"{" + b" " * 5000 + b"}", config=cfg, now=NOW)
    with pytest.raises(PayloadTooLargeError):
        Window.from_dict(d, config=cfg, now=NOW)  # 10 classes > 5
    with pytest.raises(PayloadTooLargeError):
        Window.from_dict(d, config=WindowConfig(max_features=8), now=NOW)
    with pytest.raises(ValidationError, match="not JSON"):
        Window.from_json(b"{not json", now=NOW)


def test_newer_schema_says_upgrade(parts):
    d = _base(parts)
    d["v"] = 2
    with pytest.raises(SchemaVersionError) as e:
        Window.from_dict(d, now=NOW)
    assert "upgrade" in e.value.hint


def test_merge_refuses_mixed_references_unless_asked(parts, digits_reference):
    a = parts[0][0]
    b = parts[0][1].copy()
    b.reference_id = "0123456789abcdef"
    with pytest.raises(TelemetryError) as e:
        merge_windows([a, b])
    assert e.value.hint
    m = merge_windows([a, b], on_mismatch="drop")
    assert m.feature_counts is None and m.requests == a.requests + b.requests
    with pytest.raises(TelemetryError):
        merge_windows([])


def test_empty_window_round_trips():
    w = Window.empty(NOW)
    assert Window.from_dict(w.to_dict(), now=NOW).to_dict() == w.to_dict()
    assert w.health().latency_p50_ms is None and w.mean_confidence is None
