"""Sampler: opt-in, rates, low-confidence and escalation bias, byte budget, privacy switch."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from edgefleet.errors import ConfigError
from edgefleet.telemetry import Aggregator, AggregatorConfig, Outbox, Sampler, SamplerConfig


def _within(k: int, n: int, p: float) -> bool:
    """k is within 4 binomial standard deviations of n*p."""
    return abs(k - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1


def test_off_unless_enabled():
    got = []
    s = Sampler(sink=got.append)
    assert s.offer(confidence=np.full(1000, 0.1)) == 0 and got == []


def test_rates_and_low_confidence_bias():
    got = []
    cfg = SamplerConfig(
        enabled=True, rate=0.02, low_confidence_threshold=0.6, low_confidence_rate=0.3, seed=1
    )
    s = Sampler(cfg, sink=got.append)
    n = 20_000
    conf = np.where(np.arange(n) % 4 == 0, 0.4, 0.95)  # a quarter is low confidence
    s.offer(confidence=conf)
    low = sum(1 for g in got if g["reason"] == "low_confidence")
    rnd = sum(1 for g in got if g["reason"] == "random")
    assert _within(low, n // 4, 0.3)
    assert _within(rnd, 3 * n // 4, 0.02)
    assert s.counters["kept"] == len(got) == low + rnd and s.counters["offered"] == n


def test_escalated_rows_are_favoured():
    got = []
    s = Sampler(SamplerConfig(enabled=True, rate=0.0, escalated_rate=1.0, seed=2), sink=got.append)
    esc = np.zeros(100, dtype=bool)
    esc[[3, 50, 99]] = True
    s.offer(confidence=np.full(100, 0.99), escalated=esc)
    assert [g["reason"] for g in got] == ["escalated"] * 3


def test_byte_budget_counts_against_the_outbox(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as ob:
        cfg = SamplerConfig(enabled=True, rate=1.0, byte_budget=20_000, privacy="raw", seed=3)
        s = Sampler(cfg, outbox=ob)
        x = np.random.default_rng(0).random((200, 64))
        s.offer(confidence=np.full(200, 0.9), inputs=x)
        assert ob.bytes_of("sample") <= 20_000 + 64 * s.counters["kept"]
        assert 0 < s.counters["kept"] < 200
        assert s.counters["skipped_budget"] == 200 - s.counters["kept"]
        # once the queue drains, sampling resumes
        ob.ack([i.id for i in ob.peek(1000)])
        assert s.offer(confidence=np.full(5, 0.9), inputs=x[:5]) == 5


def test_privacy_switch():
    x = np.arange(64, dtype=np.float32).reshape(1, 64) / 64
    feats = np.ones((1, 3))
    out = {}
    for mode in ("raw", "hash", "features", "drop"):
        got = []
        Sampler(SamplerConfig(enabled=True, rate=1.0, privacy=mode, hash_key="k"), sink=got.append).offer(
            confidence=np.array([0.5]), inputs=x, features=feats, scores=np.array([[0.5, 0.5]]), labels=["7"]
        )
        out[mode] = got[0]
    raw = out["raw"]
    assert np.frombuffer(base64.b64decode(raw["input_b64"]), dtype=np.float32).tolist() == x[0].tolist()
    assert "input_b64" not in out["hash"] and len(out["hash"]["input_hash"]) == 32
    for mode in ("features", "drop"):
        assert "input_b64" not in out[mode] and "input_hash" not in out[mode]
    assert "features" not in out["drop"]  # drop keeps only the answer
    for mode, s in out.items():  # outputs and the predicted class are always kept; features unless drop
        assert s["scores"] == [0.5, 0.5] and s["predicted"] == "7"
        assert s.get("features") == (None if mode == "drop" else [1.0, 1.0, 1.0])
    # the keyed digest changes with the key
    other = []
    Sampler(SamplerConfig(enabled=True, rate=1.0, privacy="hash", hash_key="other"), sink=other.append).offer(
        confidence=np.array([0.5]), inputs=x
    )
    assert other[0]["input_hash"] != out["hash"]["input_hash"]


def test_oversized_samples_are_skipped():
    got = []
    s = Sampler(SamplerConfig(enabled=True, rate=1.0, privacy="raw", max_sample_bytes=1000), sink=got.append)
    s.offer(confidence=np.array([0.9]), inputs=np.zeros((1, 4096)))
    assert got == [] and s.counters["skipped_size"] == 1


def test_outbox_and_sink_are_exclusive(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as ob, pytest.raises(ConfigError):
        Sampler(outbox=ob, sink=print)


def test_aggregator_feeds_the_sampler(digits_predictor, digits_reference, digits_split, clock, tmp_path):
    with Outbox(tmp_path / "o.sqlite") as ob:
        sampler = Sampler(
            SamplerConfig(enabled=True, rate=0.0, low_confidence_rate=1.0, privacy="hash"), outbox=ob
        )
        agg = Aggregator(
            digits_predictor,
            reference=digits_reference,
            config=AggregatorConfig(resources=False, flush_rows=16),
            sampler=sampler,
            monotonic=clock.monotonic,
            wall=clock.wall,
        )
        x = (digits_split.x_test / 16.0).astype(np.float32)
        noisy = np.clip(x + np.random.default_rng(0).normal(0, 0.5, x.shape), 0, 1).astype(np.float32)
        probs = [agg.predict({"input": noisy[i : i + 1]})["probabilities"] for i in range(100)]
        agg.flush_window()
        low = int((np.concatenate(probs).max(axis=1) < 0.6).sum())
        samples = ob.peek(1000, kinds=["sample"])
        assert low > 0 and len(samples) == low
        s = samples[0].payload
        assert s["reason"] == "low_confidence" and len(s["features"]) == 64 and "input_hash" in s
