"""Every rollout gate at its threshold: exactly at the limit passes, just past it fails (or waits).

Plain figures (``server._gates`` needs no database); Hypothesis picks the thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.server._gates import (
    GateResult,
    error_rate_verdict,
    failure_reason,
    gate_waits,
    health_gates,
    install_failure_gate,
    judge,
    pick_reference,
    ratio,
    wave_verdict,
)
from edgefleet.server._schemas import RolloutGates

EPS = 1e-9


@dataclass
class H:
    requests: int = 1000
    errors: int = 0
    error_rate: float | None = 0.0
    latency_p95_ms: float | None = None
    mean_confidence: float | None = None
    golden_pass_rate: float | None = None
    shadow_agreement: float | None = None
    drift_score: float | None = None


def _gates(new, ref=None, judged=True, **g):
    return {x.name: x for x in health_gates(new, ref, RolloutGates(**g), judged=judged)}


# --- error rate ------------------------------------------------------------------------------------------


@given(requests=st.integers(1, 2000), limit=st.floats(0, 1))
def test_error_rate_at_the_limit_passes(requests, limit):
    errors = int(requests * limit)  # at or under the limit
    assert error_rate_verdict(errors, requests, limit, 0.01) == ("pass", 1.0)


def test_error_rate_with_no_requests_passes():
    assert error_rate_verdict(0, 0, 0.0, 0.01) == ("pass", 1.0)


def test_error_rate_one_error_over_the_limit_waits_or_fails_on_the_p_value():
    verdict, p = error_rate_verdict(11, 1000, 0.01, 0.01)  # 1.1 % against 1 %: could be chance
    assert verdict == "wait" and 0.01 <= p < 1
    verdict, p = error_rate_verdict(60, 1000, 0.01, 0.01)
    assert verdict == "fail" and p < 0.01
    # alpha is a strict bound: p == alpha waits, p just under alpha fails
    _, p = error_rate_verdict(20, 1000, 0.01, 0.5)
    assert error_rate_verdict(20, 1000, 0.01, p)[0] == "wait"
    assert error_rate_verdict(20, 1000, 0.01, p * (1 + 1e-9))[0] == "fail"


def test_error_rate_limit_is_reference_plus_increase_capped_at_one():
    ref = H(error_rate=0.03)
    g = _gates(H(requests=1000, errors=50, error_rate=0.05), ref, max_error_rate_increase=0.02)
    assert g["error_rate"].threshold == pytest.approx(0.05) and g["error_rate"].status == "pass"
    assert g["error_rate"].reference == 0.03
    g = _gates(
        H(requests=1000, errors=51, error_rate=0.051), ref, max_error_rate_increase=0.02, error_rate_alpha=1
    )
    assert g["error_rate"].status == "fail" and "51 errors in 1000 requests" in g["error_rate"].detail
    g = _gates(H(error_rate=0.5, errors=500), H(error_rate=0.99), max_error_rate_increase=0.5)
    assert g["error_rate"].threshold == 1.0


def test_without_a_reference_the_absolute_error_limit_applies():
    g = _gates(H(requests=100, errors=5, error_rate=0.05), None, max_error_rate=0.05)
    assert g["error_rate"].threshold == 0.05 and g["error_rate"].status == "pass"
    assert g["error_rate"].reference is None
    g = _gates(
        H(requests=100, errors=6, error_rate=0.06),
        H(error_rate=None),
        max_error_rate=0.05,
        error_rate_alpha=1,
    )
    assert g["error_rate"].threshold == 0.05 and g["error_rate"].status == "fail"


def test_error_rate_without_requests_is_skipped():
    g = _gates(H(requests=0, error_rate=None))
    assert g["error_rate"].status == "skipped" and g["error_rate"].detail == "no requests"


# --- ratios and thresholds -------------------------------------------------------------------------------


@given(limit=st.floats(0.5, 3))
def test_latency_ratio_at_the_limit_passes_and_just_above_fails(limit):
    ref = H(latency_p95_ms=8.0)  # a power of two: 8 * limit / 8 == limit exactly
    at = _gates(H(latency_p95_ms=8.0 * limit), ref, max_latency_p95_ratio=limit)["latency_p95_ratio"]
    assert at.status == "pass" and at.reference == 8.0
    over = _gates(
        H(latency_p95_ms=8.0 * limit * (1 + 1e-6)),
        ref,
        max_latency_p95_ratio=limit,
        latency_floor_ms=0,
    )
    assert over["latency_p95_ratio"].status == "fail"


@given(limit=st.floats(0.1, 1))
def test_confidence_ratio_at_the_limit_passes_and_just_below_fails(limit):
    ref = H(mean_confidence=0.5)
    at = _gates(H(mean_confidence=0.5 * limit), ref, min_confidence_ratio=limit)["confidence_ratio"]
    assert at.status == "pass" and at.value == pytest.approx(limit)
    under = _gates(H(mean_confidence=0.5 * limit * (1 - 1e-6)), ref, min_confidence_ratio=limit)
    assert under["confidence_ratio"].status == "fail"


def test_ratio_gates_without_figures_are_skipped():
    g = _gates(H(latency_p95_ms=5.0, mean_confidence=0.9), None)
    assert g["latency_p95_ratio"].status == "skipped" and g["latency_p95_ratio"].threshold is None
    assert g["confidence_ratio"].status == "skipped" and g["confidence_ratio"].threshold is None
    g = _gates(H(), H(latency_p95_ms=5.0, mean_confidence=0.9))
    assert g["latency_p95_ratio"].status == "skipped" and g["confidence_ratio"].status == "skipped"


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [(1.0, 2.0, 0.5), (0.0, 2.0, 0.0), (1.0, 0.0, None), (1.0, -1.0, None), (None, 1.0, None)],
)
def test_ratio(a, b, want):
    assert ratio(a, b) == want
    assert ratio(1.0, None) is None


@given(limit=st.floats(0, 1))
def test_golden_and_shadow_at_the_limit_pass_and_just_below_fail(limit):
    g = _gates(
        H(golden_pass_rate=limit, shadow_agreement=limit),
        min_golden_pass_rate=limit,
        min_shadow_agreement=limit,
    )
    assert g["golden_pass_rate"].status == "pass" and g["shadow_agreement"].status == "pass"
    if limit > 1e-6:
        below = limit - 1e-6
        g = _gates(
            H(golden_pass_rate=below, shadow_agreement=below),
            min_golden_pass_rate=limit,
            min_shadow_agreement=limit,
        )
        assert g["golden_pass_rate"].status == "fail" and g["shadow_agreement"].status == "fail"


@given(ref=st.floats(0, 1), inc=st.floats(0, 1))
def test_drift_at_reference_plus_increase_passes_and_just_above_fails(ref, inc):
    limit = ref + inc
    g = _gates(H(drift_score=limit), H(drift_score=ref), max_drift_increase=inc)["drift_score"]
    assert g.status == "pass" and g.threshold == limit and g.reference == ref
    over = _gates(H(drift_score=limit + max(1e-6, limit * 1e-6)), H(drift_score=ref), max_drift_increase=inc)
    assert over["drift_score"].status == "fail"


def test_drift_without_a_reference_drift_uses_zero():
    g = _gates(H(drift_score=0.1), None, max_drift_increase=0.1)["drift_score"]
    assert g.threshold == 0.1 and g.reference == 0.0 and g.status == "pass"
    g = _gates(H(drift_score=0.1), H(drift_score=None), max_drift_increase=0.05)["drift_score"]
    assert g.threshold == 0.05 and g.status == "fail"


def test_unjudged_wave_waits_on_every_gate():
    g = _gates(H(error_rate=0.9, errors=900, latency_p95_ms=99.0), H(latency_p95_ms=1.0), judged=False)
    assert {x.status for x in g.values()} == {"wait"}
    assert all(x.detail == "not enough data yet" for x in g.values())


def test_judge():
    assert judge("x", 1.0, 2.0, lambda v, t: v <= t, judged=True).status == "pass"
    assert judge("x", 3.0, 2.0, lambda v, t: v <= t, judged=True).status == "fail"
    assert judge("x", None, 2.0, lambda v, t: True, judged=True, why="none").detail == "none"
    assert judge("x", 1.0, None, lambda v, t: True, judged=True).status == "skipped"
    said = judge("x", 1.0, 2.0, lambda v, t: ("wait", "more data"), judged=True, reference=0.5)
    assert (said.status, said.detail, said.reference) == ("wait", "more data", 0.5)


# --- reference, installs, verdict ------------------------------------------------------------------------


@given(minimum=st.integers(0, 50), got=st.integers(0, 60), base=st.integers(0, 60))
def test_reference_is_the_control_group_from_its_minimum_else_the_baseline(minimum, got, base):
    control, baseline = H(requests=got), H(requests=base)
    ref, source = pick_reference(control, baseline, minimum)
    if got >= minimum and got > 0:
        assert (ref, source) == (control, "control")
    elif base >= max(1, minimum):
        assert (ref, source) == (baseline, "baseline")
    else:
        assert (ref, source) == (None, "none")
    assert pick_reference(H(requests=0), None, minimum) == (None, "none")


@given(
    installed=st.integers(0, 20),
    failed=st.integers(0, 20),
    wave=st.integers(1, 20),
    min_devices=st.integers(1, 20),
    limit=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 1.0]),
)
def test_install_failure_gate(installed, failed, wave, min_devices, limit):
    r = install_failure_gate(
        installed=installed, failed=failed, wave=wave, min_devices=min_devices, limit=limit
    )
    attempted = installed + failed
    if attempted >= min_devices or (failed and failed > limit * max(wave, min_devices)):
        rate = failed / attempted
        assert r.status == ("fail" if rate > limit else "pass") and r.value == rate and r.threshold == limit
        assert r.detail == f"{failed} of {attempted} installs failed"
    else:
        assert r.status == "wait" and r.detail == f"{attempted} of {min_devices} installs finished"


def test_install_failure_rate_exactly_at_the_limit_passes():
    assert install_failure_gate(installed=4, failed=1, wave=5, min_devices=5, limit=0.2).status == "pass"
    assert install_failure_gate(installed=3, failed=1, wave=4, min_devices=4, limit=0.2).status == "fail"
    assert install_failure_gate(installed=3, failed=0, wave=5, min_devices=4, limit=0.2).status == "wait"
    assert install_failure_gate(installed=4, failed=0, wave=5, min_devices=4, limit=0.2).status == "pass"
    # an early failure: judged before min_devices once failures alone exceed the limit of the whole wave
    assert install_failure_gate(installed=0, failed=2, wave=10, min_devices=5, limit=0.2).status == "wait"
    assert install_failure_gate(installed=0, failed=3, wave=10, min_devices=5, limit=0.2).status == "fail"


def test_wave_verdict_and_waits():
    p, f = GateResult("a", "pass"), GateResult("b", "fail", 2.0, 1.0)
    w = GateResult("c", "wait", detail="2 of 3 installs finished")
    quiet = GateResult("d", "wait", detail="not enough data yet")
    assert wave_verdict([p, w, f], ["x"]) == "fail"
    assert wave_verdict([p, w], ["x"]) == "wait"
    assert wave_verdict([p, GateResult("s", "skipped")], []) == "pass"
    assert gate_waits([p, w, quiet, f]) == ["c: 2 of 3 installs finished"]
    assert failure_reason([vars(p), vars(f), vars(GateResult("e", "fail", None, 0.5))]) == (
        "gate failed: b=2 (limit 1), e=n/a (limit 0.5)"
    )


def test_error_rate_from_one_request_is_judged_not_waved_through():
    assert error_rate_verdict(0, 1, 0.01, 0.01) == ("pass", 1.0)
    verdict, p = error_rate_verdict(1, 1, 0.01, 0.5)
    assert verdict == "fail" and p == pytest.approx(0.01)


@pytest.mark.parametrize(("new_ms", "status"), [(16.0, "pass"), (17.5, "pass"), (18.0, "fail")])
def test_latency_over_the_ratio_passes_while_within_the_floor_of_the_reference(new_ms, status):
    """8 ms -> 16 ms is over a 1.5x ratio but under 10 ms apart: noise on a fast model; 10 ms apart fails."""
    g = _gates(
        H(latency_p95_ms=new_ms), H(latency_p95_ms=8.0), max_latency_p95_ratio=1.5, latency_floor_ms=10.0
    )
    assert g["latency_p95_ratio"].status == status
