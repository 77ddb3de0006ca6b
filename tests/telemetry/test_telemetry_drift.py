"""Drift tests on real digits: real shifts are found, unshifted held-out windows stay quiet."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.errors import TelemetryError
from edgefleet.telemetry import (
    Aggregator,
    AggregatorConfig,
    DriftConfig,
    Reference,
    drift,
    drift_by_group,
)
from edgefleet.telemetry._drift import holm, psi
from edgefleet.telemetry._shifts import class_mix_indices, inject_shift

ROWS = 300


@pytest.fixture(scope="module")
def make_window(digits_predictor, digits_reference):
    ref = Reference.from_dict(digits_reference)

    def make(x, tags=None):
        agg = Aggregator(
            None,
            reference=ref,
            config=AggregatorConfig(window_s=1e9, feature_window_s=0, resources=False, drift_on_close=False),
            tags=tags,
        )
        probs = digits_predictor.predict({"input": x.astype(np.float32)})["probabilities"]
        agg.record({"input": x}, {"probabilities": probs}, latency_ms=1.0)
        return agg.flush_window()

    return make


@pytest.fixture(scope="module")
def held_out(digits_split):
    return digits_split.x_test / 16.0, digits_split.y_test


def test_unshifted_held_out_windows_do_not_fire(make_window, held_out, digits_reference):
    x, _ = held_out
    rng = np.random.default_rng(11)
    fired = []
    for _ in range(30):
        w = make_window(x[rng.choice(len(x), ROWS, replace=False)])
        rep = drift(w, digits_reference)
        fired.append(rep.drifted)
        assert 0.0 <= rep.score <= 1.0 and rep.skipped == []
    assert sum(fired) <= 2, f"{sum(fired)} of 30 unshifted windows flagged"


@pytest.mark.parametrize(
    "kind, strength", [("noise", 0.2), ("brightness", 0.15), ("rotation", 20.0), ("contrast", -0.5)]
)
def test_real_input_shifts_are_detected(make_window, held_out, digits_reference, kind, strength):
    x, _ = held_out
    rng = np.random.default_rng(5)
    for _ in range(3):
        xs = inject_shift(x[rng.choice(len(x), ROWS, replace=False)], kind, strength, rng=rng)
        rep = drift(make_window(xs), digits_reference)
        assert rep.drifted and rep.score >= DriftConfig().threshold, (kind, rep.top(3))
        assert any(t.kind == "feature" for t in rep.fired)


def test_class_mix_change_fires_the_class_test(make_window, held_out, digits_reference):
    x, y = held_out
    rng = np.random.default_rng(6)
    idx = class_mix_indices(y, 0.6, ROWS, rng=rng)
    rep = drift(make_window(x[idx]), digits_reference)
    assert rep.drifted
    assert "classes" in [t.name for t in rep.fired]


def test_one_bad_region_stands_out(make_window, held_out, digits_reference):
    x, _ = held_out
    rng = np.random.default_rng(8)
    ws = []
    for region in ("eu", "us", "apac"):
        for dev in range(3):
            xs = x[rng.choice(len(x), 120, replace=False)]
            if region == "apac":
                xs = inject_shift(xs, "noise", 0.25, rng=rng)
            ws.append(
                make_window(xs, tags={"device_class": "cpu", "region": region, "device_id": f"{region}{dev}"})
            )
    reports = drift_by_group(ws, digits_reference)
    assert set(reports) == {("cpu", "eu"), ("cpu", "us"), ("cpu", "apac")}
    assert reports[("cpu", "apac")].drifted
    assert not reports[("cpu", "eu")].drifted and not reports[("cpu", "us")].drifted
    with pytest.raises(TelemetryError):
        drift_by_group([], digits_reference)


def test_too_few_rows_or_another_reference_are_skipped_not_guessed(make_window, held_out, digits_reference):
    x, _ = held_out
    small = make_window(x[:20])
    rep = drift(small, digits_reference)
    assert rep.score == 0.0 and not rep.drifted
    assert any("min_rows" in s for s in rep.skipped)
    w = make_window(x[:200])
    w.reference_id = "ffffffffffffffff"
    rep = drift(w, digits_reference)
    assert any("reference ffffffffffffffff" in s for s in rep.skipped)
    assert all(t.kind != "feature" for t in rep.tests)
    # merged windows are tested as one
    m = drift([make_window(x[:60]), make_window(x[60:120])], digits_reference, DriftConfig(min_rows=100))
    assert m.rows == 120 and not m.skipped


def test_holm_matches_statsmodels():
    """The Holm correction is kept hand-written (statsmodels would bring pandas onto devices) but must agree."""
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(7)
    for m in (1, 2, 5, 40):
        p = np.concatenate([rng.uniform(0, 0.05, m // 2), rng.uniform(0, 1, m - m // 2)])
        p[rng.integers(0, m)] = p[0]  # ties
        expected = multitest.multipletests(p, method="holm")[1]
        np.testing.assert_allclose(holm(p), expected, rtol=1e-12, atol=0)


def test_holm_and_psi():
    adj = holm([0.01, 0.04, 0.03, 0.5])
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> monotone 0.09, 0.5*1=0.5
    assert adj.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    same = np.array([[10, 20, 30]])
    assert psi(same, same * 3)[0] == pytest.approx(0.0, abs=1e-3)
    assert psi(np.array([[30, 20, 10]]), same)[0] > 0.2


def test_report_serializes(make_window, held_out, digits_reference):
    x, _ = held_out
    rep = drift(make_window(x[:200]), digits_reference)
    d = rep.to_dict()
    assert set(d) >= {"score", "drifted", "rows", "tests", "fired", "skipped"}
    assert len(d["tests"]) == 64 + 2
