"""Drift decisions at their edges: min_rows, alpha (strict), the score threshold (inclusive), psi_alarm,
the corrections, on real digits windows against the bundle's own reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.telemetry import Aggregator, AggregatorConfig, DriftConfig, Reference, drift
from edgefleet.telemetry._drift import DriftReport, holm, psi
from edgefleet.telemetry._shifts import inject_shift


@pytest.fixture(scope="module")
def make_window(digits_predictor, digits_reference):
    ref = Reference.from_dict(digits_reference)

    def make(x):
        agg = Aggregator(
            None,
            reference=ref,
            config=AggregatorConfig(window_s=1e9, feature_window_s=0, resources=False, drift_on_close=False),
        )
        probs = digits_predictor.predict({"input": x.astype(np.float32)})["probabilities"]
        agg.record({"input": x}, {"probabilities": probs}, latency_ms=1.0)
        return agg.flush_window()

    return make


@pytest.fixture(scope="module")
def x_test(digits_split):
    return digits_split.x_test / 16.0


@pytest.fixture(scope="module")
def shifted(make_window, x_test, digits_reference):
    """A drifted window and its report (a clear brightness shift)."""
    x = inject_shift(x_test[:300], "brightness", 0.15, rng=np.random.default_rng(0))
    rep = drift(make_window(np.clip(x, 0, 1)), digits_reference)
    assert rep.fired, "the fixture must fire at least one test"
    return rep


@pytest.mark.parametrize("rows", [100, 250])
def test_min_rows_is_inclusive_for_every_test(make_window, x_test, digits_reference, rows):
    w = make_window(x_test[:rows])
    at = drift(w, digits_reference, DriftConfig(min_rows=rows))
    assert at.skipped == [] and {t.kind for t in at.tests} == {"feature", "confidence", "classes"}
    assert all(t.n == rows for t in at.tests)
    past = drift(w, digits_reference, DriftConfig(min_rows=rows + 1))
    assert past.tests == [] and past.score == 0.0 and not past.drifted
    assert past.skipped == [
        f"features: {rows} rows < min_rows {rows + 1}",
        f"confidence: {rows} rows < min_rows {rows + 1}",
        f"classes: {rows} rows < min_rows {rows + 1}",
    ]


def test_each_test_family_can_be_switched_off(make_window, x_test, digits_reference):
    w = make_window(x_test[:150])
    for flag, kind in (("features", "feature"), ("confidence", "confidence"), ("classes", "classes")):
        rep = drift(w, digits_reference, DriftConfig(**{flag: False}))
        assert kind not in {t.kind for t in rep.tests} and rep.tests


def test_score_threshold_is_inclusive(shifted):
    s = shifted.score
    assert 0 < s <= 1
    assert shifted.rescored(DriftConfig(threshold=s)).drifted
    if s < 1:
        assert not shifted.rescored(DriftConfig(threshold=float(np.nextafter(s, 2)))).drifted


def test_alpha_is_a_strict_bound(shifted):
    best = min(t.p_adjusted for t in shifted.tests)
    assert 0 <= best < 1
    if best > 0:
        at = shifted.rescored(DriftConfig(alpha=best))
        assert all(t.p_adjusted >= best for t in at.tests) and not any(
            t.p_adjusted == best and t.fired for t in at.tests
        )
    just_above = shifted.rescored(DriftConfig(alpha=float(np.nextafter(best, 1))))
    assert any(t.fired and t.p_adjusted == best for t in just_above.tests)


def test_score_is_the_strongest_firing_psi_over_psi_alarm_capped_at_one(shifted):
    top = max(t.psi for t in shifted.tests if t.fired)
    assert shifted.rescored(DriftConfig(psi_alarm=top)).score == pytest.approx(1.0)
    assert shifted.rescored(DriftConfig(psi_alarm=2 * top)).score == pytest.approx(0.5)
    assert shifted.rescored(DriftConfig(psi_alarm=top / 10)).score == 1.0
    quiet = shifted.rescored(DriftConfig(alpha=1e-300))
    assert quiet.score == 0.0 and not quiet.fired


def test_bonferroni_multiplies_by_the_number_of_tests(shifted):
    m = len(shifted.tests)
    rep = shifted.rescored(DriftConfig(correction="bonferroni"))
    for t in rep.tests:
        assert t.p_adjusted == pytest.approx(min(1.0, t.p_value * m))
    holm_rep = shifted.rescored(DriftConfig(correction="holm"))
    assert all(h.p_adjusted <= b.p_adjusted + 1e-15 for h, b in zip(holm_rep.tests, rep.tests, strict=True))


def test_a_report_without_tests_rescores_to_zero():
    rep = DriftReport(0.7, True, 5, "ref", [], ["nothing to test"]).rescored(DriftConfig(threshold=0.0))
    assert rep.score == 0.0 and not rep.drifted and rep.skipped == ["nothing to test"]


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_is_monotone_bounded_and_at_least_the_raw_p(p):
    adj = holm(p)
    m = len(p)
    assert np.all(adj >= np.asarray(p) - 1e-15) and np.all(adj <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)
    assert adj[order[0]] == pytest.approx(min(1.0, sorted(p)[0] * m))


def test_holm_small_example():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert holm([]).size == 0


def test_psi_is_zero_for_equal_proportions_and_grows_with_the_shift():
    ref = np.array([[10, 20, 30, 40]])
    assert psi(ref * 3, ref, smoothing=1e-9)[0] == pytest.approx(0.0, abs=1e-9)
    small = psi(np.array([[12, 20, 30, 38]]), ref)[0]
    big = psi(np.array([[40, 30, 20, 10]]), ref)[0]
    assert 0 < small < big


def test_top_lists_five_tests_by_default_fired_first(shifted):
    assert len(shifted.tests) > 5
    top = shifted.top()
    assert len(top) == 5 and len(shifted.top(2)) == 2
    fired = [t for t in top if t.fired]
    assert top[: len(fired)] == fired  # firing tests first, then by PSI
    assert [t.psi for t in shifted.fired] == sorted((t.psi for t in shifted.fired), reverse=True)


def _expected_class_p(obs_by_label, labels, ref_counts, min_expected):
    """The class test computed independently: reference proportions with a half count for unseen classes."""
    from scipy.stats import chisquare

    n = sum(obs_by_label.values())
    obs = [obs_by_label.get(lab, 0) for lab in labels]
    obs.append(n - sum(obs))  # every label the reference never predicted
    ref = [float(c) for c in ref_counts] + [0.0]
    pseudo = [c if c > 0 else 0.5 for c in ref]
    exp = [p / sum(pseudo) * n for p in pseudo]
    keep = [i for i, e in enumerate(exp) if e >= min_expected]
    pool = [i for i, e in enumerate(exp) if e < min_expected]
    o = [obs[i] for i in keep] + ([sum(obs[i] for i in pool)] if pool else [])
    e = [exp[i] for i in keep] + ([sum(exp[i] for i in pool)] if pool else [])
    scale = sum(o) / sum(e)
    return float(chisquare(o, [x * scale for x in e]).pvalue)


@pytest.mark.parametrize("unseen", [0, 30])
def test_class_test_uses_reference_proportions_with_a_half_count_for_unseen_classes(
    make_window, x_test, digits_reference, unseen
):
    w = make_window(x_test[:300])
    if unseen:
        w.classes["a-label-the-reference-never-saw"] = unseen
    ref = Reference.from_dict(digits_reference)
    rep = drift(w, ref, DriftConfig(features=False, confidence=False))
    (t,) = rep.tests
    assert t.kind == "classes" and t.n == 300 + unseen
    want = _expected_class_p(w.classes, list(ref.class_labels), ref.class_counts, 5.0)
    assert t.p_value == pytest.approx(want, rel=1e-9, abs=1e-300)
