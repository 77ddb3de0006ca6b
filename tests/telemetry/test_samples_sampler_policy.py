"""Sampler policy knobs of issue 13: per-class daily caps, a daily byte budget, request ids, encoded inputs,
and settings swapped in place."""

from __future__ import annotations

import base64

import numpy as np

from edgefleet.telemetry import Sampler, SamplerConfig


class Wall:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def test_per_class_cap_resets_each_day():
    got, wall = [], Wall()
    s = Sampler(
        SamplerConfig(enabled=True, rate=1.0, per_class_daily_cap=3, privacy="drop"),
        sink=got.append,
        wall=wall,
    )
    labels = ["cat"] * 10 + ["dog"] * 2
    s.offer(confidence=np.full(12, 0.9), labels=labels)
    assert [g["predicted"] for g in got] == ["cat"] * 3 + ["dog"] * 2
    assert s.counters["skipped_class_cap"] == 7
    s.offer(confidence=np.full(2, 0.9), labels=["cat", "dog"])
    assert len(got) == 6  # the dog's third of the day; no fourth cat
    wall.t += 86_400  # a new day: the caps start again
    s.offer(confidence=np.full(3, 0.9), labels=["cat"] * 3)
    assert len(got) == 9


def test_daily_byte_budget():
    got, wall = [], Wall()
    s = Sampler(
        SamplerConfig(enabled=True, rate=1.0, daily_byte_budget=2000, privacy="raw"),
        sink=got.append,
        wall=wall,
    )
    x = np.zeros((20, 64), dtype=np.float32)  # ~400 bytes of JSON each
    s.offer(confidence=np.full(20, 0.9), inputs=x)
    kept = len(got)
    assert 1 <= kept < 20 and s.counters["skipped_daily_budget"] == 20 - kept
    assert s.counters["bytes"] <= 2000
    wall.t += 86_400
    assert s.offer(confidence=np.full(1, 0.9), inputs=x[:1]) == 1


def test_request_ids_and_encoded_inputs():
    got = []
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 20
    cfg = SamplerConfig(enabled=True, rate=1.0, privacy="raw")
    s = Sampler(cfg, sink=got.append)
    s.offer(
        confidence=np.array([0.3]),
        labels=["7"],
        request_ids=["req-000001"],
        raw=[png],
        inputs=np.zeros((1, 4)),
    )
    assert got[0]["request_id"] == "req-000001" and base64.b64decode(got[0]["input_b64"]) == png
    assert "input_meta" not in got[0]  # the encoded input was kept, not the array
    s.update(cfg.model_copy(update={"privacy": "hash", "hash_key": "k"}))
    s.offer(confidence=np.array([0.3]), labels=["7"], request_ids=["req-000002"], raw=[png])
    assert "input_b64" not in got[1] and len(got[1]["input_hash"]) == 32
    assert s.counters["kept"] == 2  # counters survive an update


def test_update_turns_sampling_off():
    got = []
    s = Sampler(SamplerConfig(enabled=True, rate=1.0), sink=got.append)
    s.update(SamplerConfig(enabled=False))
    assert s.offer(confidence=np.full(10, 0.1)) == 0 and got == []
