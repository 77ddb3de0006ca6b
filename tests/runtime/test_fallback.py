"""Fallback chains, timeouts for hung models, and the circuit breaker."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgefleet.errors import (
    CircuitOpenError,
    DeadlineExceededError,
    InferenceError,
    ModelTimeoutError,
    ValidationError,
)
from edgefleet.runtime import BreakerConfig, FallbackConfig, OrtEngine
from edgefleet.runtime._fallback import Fallback, Heuristic
from edgefleet.runtime._guards import Breaker, CircuitBreaker, Timeout
from edgefleet.runtime._metrics import RuntimeMetrics
from edgefleet.runtime._predictor import deadline_in


@pytest.fixture
def primary(digits_mlp):
    return OrtEngine(digits_mlp, tier="primary")


@pytest.fixture
def backup(big_mlp):
    return OrtEngine(big_mlp, tier="backup")


def test_failing_primary_falls_back_and_says_so(primary, backup, doubles, x_test):
    metrics = RuntimeMetrics()
    fb = Fallback(doubles.Raising(primary, InferenceError("boom")), backup, metrics=metrics)
    out = fb.predict({"input": x_test[:4]})
    assert out.tiers == ("backup",) * 4
    assert [(e.kind, e.tier, e.detail) for e in out.events] == [("fallback", "primary", "inference")]
    np.testing.assert_array_equal(out["label"], backup.predict({"input": x_test[:4]})["label"])
    assert (
        'edgefleet_runtime_fallbacks_total{reason="inference",tier="primary"} 1.0'
        in metrics.exposition().decode()
    )


def test_healthy_primary_answers(primary, backup, x_test):
    out = Fallback(primary, backup).predict({"input": x_test[:2]})
    assert out.tiers == ("primary", "primary") and out.events == ()


def test_unexpected_exception_types_also_fall_back(primary, backup, doubles, x_test):
    out = Fallback(doubles.Raising(primary, RuntimeError("segfault-ish")), backup).predict(
        {"input": x_test[:1]}
    )
    assert out.tier == "backup"


def test_bad_input_does_not_fall_back(primary, backup, doubles, x_test):
    rec = doubles.Recording(backup)
    fb = Fallback(doubles.Raising(primary, ValidationError("bad input")), rec)
    with pytest.raises(ValidationError):
        fb.predict({"input": x_test[:1]})
    assert rec.calls == []


def test_every_tier_failing_is_one_clear_error(primary, backup, doubles, x_test):
    fb = Fallback(
        doubles.Raising(primary, InferenceError("p down")), doubles.Raising(backup, InferenceError("b down"))
    )
    with pytest.raises(InferenceError) as e:
        fb.predict({"input": x_test[:1]})
    assert "p down" in e.value.message and "b down" in e.value.message and e.value.hint


def test_heuristic_is_the_last_resort(primary, doubles, x_test):
    prior = np.full(10, 0.1, np.float32)
    h = Heuristic({"probabilities": prior, "label": np.int64(0)}, primary.metadata)
    out = Fallback(doubles.Raising(primary, InferenceError("down")), h).predict({"input": x_test[:3]})
    assert out.tiers == ("heuristic",) * 3
    assert out["probabilities"].shape == (3, 10) and out["label"].tolist() == [0, 0, 0]


def test_memory_pressure_skips_the_primary(primary, backup, doubles, x_test):
    rec = doubles.Recording(primary)
    available = {"mb": 50.0}  # a fake RAM probe: the only way to simulate pressure safely
    fb = Fallback(
        rec, backup, config=FallbackConfig(min_available_mb=100), memory_probe=lambda: available["mb"]
    )
    out = fb.predict({"input": x_test[:1]})
    assert out.tier == "backup" and out.events[0].kind == "memory_pressure" and rec.calls == []
    available["mb"] = 500.0
    assert fb.predict({"input": x_test[:1]}).tier == "primary"


def test_hung_model_times_out_and_falls_back(primary, backup, doubles, x_test):
    gate = doubles.Gate(primary)
    guarded = Timeout(gate, 0.1, max_stuck=2)
    fb = Fallback(guarded, backup, config=FallbackConfig(breaker=False))
    try:
        t0 = time.monotonic()
        out = fb.predict({"input": x_test[:1]})
        assert time.monotonic() - t0 < 2
        assert out.tier == "backup" and out.events[0].detail == "model_timeout"
        with pytest.raises(ModelTimeoutError):
            guarded.predict({"input": x_test[:1]})
        assert guarded.stuck == 2 and gate.entries == 2
        with pytest.raises(ModelTimeoutError, match="hung"):  # fails fast: no more threads piled up
            guarded.predict({"input": x_test[:1]})
        assert gate.entries == 2  # the model was not called again
        gate.release()
        deadline = time.monotonic() + 5
        while guarded.stuck and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guarded.stuck == 0
        assert guarded.predict({"input": x_test[:1]}).tier == "primary"  # recovered
    finally:
        gate.release()  # never leave a worker blocked, even when an assertion above fails
        guarded.close()


def test_timeout_respects_the_request_deadline(primary, doubles, x_test):
    gate = doubles.Gate(primary)
    guarded = Timeout(gate, 5.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            guarded.predict({"input": x_test[:1]}, deadline=deadline_in(0.1))
        assert time.monotonic() - t0 < 1
    finally:
        gate.release()
        guarded.close()


# --- circuit breaker ------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_breaker_opens_at_the_threshold_backs_off_and_recovers():
    clock = Clock()
    cfg = BreakerConfig(failure_threshold=3, window=10, backoff_s=1, backoff_factor=2, jitter=0)
    br = CircuitBreaker("cloud", cfg, clock=clock)
    for _ in range(2):
        assert br.allow()
        br.record(False)
    assert br.state == "closed"
    br.allow()
    br.record(False)
    assert br.state == "open" and br.failures_when_opened == [3]
    assert not br.allow() and br.retry_in() == pytest.approx(1.0)
    clock.t += 1.0
    assert br.state == "half_open"
    assert br.allow() and not br.allow()  # one probe at a time
    br.record(False)  # probe failed: open again, twice as long
    assert br.state == "open" and br.retry_in() == pytest.approx(2.0)
    clock.t += 2.0
    assert br.allow()
    br.record(True)
    assert br.state == "closed" and br.allow()


def test_breaker_backoff_is_capped_and_jittered():
    clock = Clock()
    cfg = BreakerConfig(
        failure_threshold=1, window=1, backoff_s=1, backoff_factor=10, backoff_max_s=5, jitter=0.5
    )
    periods = []
    for r in (0.0, 1.0):
        br = CircuitBreaker("x", cfg, clock=clock, rng=lambda r=r: r)
        br.allow()
        br.record(False)
        periods.append(br.retry_in())
        clock.t += 10
        br.allow()
        br.record(False)  # re-open: 1 * 10 = 10 s, capped at 5, jittered
        periods.append(br.retry_in())
    assert periods == pytest.approx([0.5, 2.5, 1.5, 7.5])


def test_breaker_in_front_of_a_failing_primary_stops_calling_it(primary, backup, doubles, x_test):
    flaky = doubles.Raising(primary, InferenceError("down"))
    cfg = BreakerConfig(failure_threshold=3, window=5, backoff_s=60)
    metrics = RuntimeMetrics()
    fb = Fallback(flaky, backup, breaker=cfg, metrics=metrics)
    for _ in range(10):
        assert fb.predict({"input": x_test[:1]}).tier == "backup"
    assert len(flaky.calls) == 3  # then the breaker kept the broken primary out of the path
    [br] = fb.breakers()
    assert br.breaker.state == "open"
    text = metrics.exposition().decode()
    assert 'edgefleet_runtime_breaker_state{name="primary"} 2.0' in text
    assert 'edgefleet_runtime_breaker_opens_total{name="primary"} 1.0' in text
    assert 'reason="circuit_open"' in text


def test_breaker_predictor_raises_circuit_open_with_retry_after(primary, doubles, x_test):
    b = Breaker(
        doubles.Raising(primary, InferenceError("down")), BreakerConfig(failure_threshold=1, window=1)
    )
    with pytest.raises(InferenceError):
        b.predict({"input": x_test[:1]})
    with pytest.raises(CircuitOpenError) as e:
        b.predict({"input": x_test[:1]})
    assert e.value.status_code == 503 and e.value.details["retry_after"] > 0


def test_caller_errors_do_not_trip_the_breaker(primary, doubles, x_test):
    b = Breaker(
        doubles.Raising(primary, ValidationError("bad")), BreakerConfig(failure_threshold=1, window=1)
    )
    for _ in range(3):
        with pytest.raises(ValidationError):
            b.predict({"input": x_test[:1]})
    assert b.breaker.state == "closed"
