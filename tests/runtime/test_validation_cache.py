"""Validation against the manifest, and the answer cache."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.errors import InferenceError, PayloadTooLargeError, ValidationError
from edgefleet.protocol import TensorSpec
from edgefleet.runtime import CacheConfig, OrtEngine, ValidationConfig
from edgefleet.runtime._cache import AnswerCache, Cached, CacheTier
from edgefleet.runtime._validation import Validated, Validator

SPECS = [
    TensorSpec(name="pixels", dtype="float32", shape=["batch", 4], value_range=(0.0, 1.0)),
    TensorSpec(name="mask", dtype="int64", shape=["batch", "t"]),
    TensorSpec(name="ids", dtype="uint8", shape=["batch", "t"]),
]


def ok_batch(n=2, t=3):
    return {
        "pixels": np.full((n, 4), 0.5, np.float32),
        "mask": np.ones((n, t), np.int64),
        "ids": np.ones((n, t), np.uint8),
    }


@pytest.fixture
def v():
    return Validator(SPECS, ValidationConfig(max_payload_bytes=10_000, max_rows=50))


def test_valid_batch_passes_and_json_numbers_are_cast_safely(v):
    out = v.check({"pixels": [[0, 1, 0.5, 0.25]], "mask": [[1, 2]], "ids": [[3, 255]]})
    assert out["pixels"].dtype == np.float32 and out["mask"].dtype == np.int64
    assert out["ids"].dtype == np.uint8 and out["ids"].tolist() == [[3, 255]]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b.pop("mask"), "missing input"),
        (lambda b: b.update(extra=np.zeros((2, 1))), "unknown input"),
        (lambda b: b.update(pixels=b["pixels"][:, :3]), "axis 1, the model expects 4"),
        (lambda b: b.update(pixels=b["pixels"][0]), "has shape \\[4\\]"),
        (lambda b: b.update(ids=np.ones((2, 5), np.uint8)), "dimension 't'"),
        (lambda b: b.update(mask=b["mask"].astype(np.float32)), "dtype float32, the model expects int64"),
        (lambda b: b.update(ids=np.full((2, 3), 300)), "outside uint8"),
        (lambda b: b.update(ids=np.full((2, 3), -1)), "outside uint8"),
        (lambda b: b["pixels"].__setitem__((1, 2), np.nan), "non-finite value .* at \\[1, 2\\]"),
        (lambda b: b["pixels"].__setitem__((0, 3), np.inf), "non-finite"),
        (lambda b: b["pixels"].__setitem__((1, 0), 1.5), "outside \\[0.0, 1.0\\]"),
        (lambda b: b.update(pixels=[[0.1, 0.2], [0.1]]), "rectangular"),
        (lambda b: b.update(pixels=[["a", "b", "c", "d"]] * 2), "text"),
        (lambda b: b.update(pixels=[[None] * 4] * 2), "rectangular array of numbers"),
        (lambda b: b.update(pixels=np.zeros((0, 4), np.float32)), "empty"),
        (
            lambda b: b.update(pixels=[[1e300, 0, 0, 0]] * 2, mask=[[1]] * 2, ids=[[1]] * 2),
            "overflows float32",
        ),
    ],
)
def test_invalid_inputs_say_what_and_where(v, mutate, match):
    b = ok_batch()
    mutate(b)
    with pytest.raises(ValidationError, match=match) as e:
        v.check(b)
    assert e.value.status_code == 422 and e.value.hint


def test_size_limits(v):
    with pytest.raises(PayloadTooLargeError) as e:
        v.check(ok_batch(n=40, t=100))  # > 10 kB
    assert e.value.status_code == 413
    with pytest.raises(PayloadTooLargeError, match="rows"):
        v.check(ok_batch(n=60, t=1))


def test_non_mapping_is_refused(v):
    with pytest.raises(ValidationError, match="mapping"):
        v.check([1, 2, 3])


def test_checks_can_be_relaxed(digits_mlp):
    relaxed = Validator(
        SPECS, ValidationConfig(check_finite=False, check_range=False, allow_unknown_inputs=True)
    )
    b = ok_batch()
    b["pixels"][0, 0] = np.nan
    b["pixels"][0, 1] = 7
    b["unknown"] = np.zeros(3)
    out = relaxed.check(b)
    assert "unknown" not in out and np.isnan(out["pixels"][0, 0])


def test_validated_predictor_never_lets_bad_input_reach_the_model(digits_mlp, doubles, x_test):
    rec = doubles.Recording(OrtEngine(digits_mlp))
    p = Validated(rec)
    bad = x_test[:2].copy()
    bad[1, 5] = np.nan
    with pytest.raises(ValidationError):
        p.predict({"input": bad})
    assert rec.calls == []
    assert p.predict({"input": x_test[:2].astype(np.float64)})["label"].shape == (2,)


# --- cache ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_cache_serves_repeats_and_computes_only_misses(digits_mlp, doubles, x_test):
    rec = doubles.Recording(OrtEngine(digits_mlp))
    cache = AnswerCache(CacheConfig(enabled=True))
    p = Cached(rec, cache)
    first = p.predict({"input": x_test[:3]})
    assert first.tiers == ("primary",) * 3
    mixed = p.predict({"input": x_test[1:5]})  # rows 1, 2 cached; 3, 4 new
    assert mixed.tiers == ("cache", "cache", "primary", "primary")
    assert [len(c["input"]) for c in rec.calls] == [3, 2]
    ref = OrtEngine(digits_mlp).predict({"input": x_test[1:5]})
    np.testing.assert_allclose(mixed["probabilities"], ref["probabilities"], rtol=1e-6)
    assert any(e.kind == "cache_hit" and e.rows == 2 for e in mixed.events)


def test_cache_ttl_byte_cap_and_lru(digits_mlp, x_test):
    clock = Clock()
    row = {"y": np.zeros(100, np.float32)}  # 400 bytes + 64 overhead
    cache = AnswerCache(CacheConfig(enabled=True, ttl_s=10, max_bytes=1000, max_entries=100), clock=clock)
    cache.put(b"a", row, "primary")
    cache.put(b"b", row, "primary")
    assert len(cache) == 2 and cache.bytes <= 1000
    cache.get(b"a")  # a is now the most recently used
    cache.put(b"c", row, "primary")  # over the byte cap: evicts the least recently used (b)
    assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.get(b"c") is not None
    clock.t = 11
    assert cache.get(b"a") is None  # expired for normal use
    assert cache.get(b"a", max_age=float("inf")) is not None  # still there for stale-if-error
    small = AnswerCache(CacheConfig(enabled=True, max_entries=2))
    for k in (b"1", b"2", b"3"):
        small.put(k, row, "p")
    assert len(small) == 2 and small.get(b"1") is None


def test_cached_arrays_are_not_aliased(digits_mlp, x_test):
    cache = AnswerCache(CacheConfig(enabled=True))
    p = Cached(OrtEngine(digits_mlp), cache)
    out = p.predict({"input": x_test[:1]})
    out["probabilities"][:] = -1  # a caller scribbling on its answer
    again = p.predict({"input": x_test[:1]})
    assert again.tiers == ("cache",) and (again["probabilities"] >= 0).all()


def test_cache_keys_depend_on_model_version(digits_mlp, x_test):
    cache = AnswerCache(CacheConfig(enabled=True))
    v1 = OrtEngine(digits_mlp, version="1.0.0")
    v2 = OrtEngine(digits_mlp, version="2.0.0")
    Cached(v1, cache).predict({"input": x_test[:1]})
    assert Cached(v2, cache).predict({"input": x_test[:1]}).tiers == ("primary",)


def test_cache_tier_answers_seen_inputs_only(digits_mlp, x_test):
    eng = OrtEngine(digits_mlp)
    cache = AnswerCache(CacheConfig(enabled=True))
    Cached(eng, cache).predict({"input": x_test[:2]})
    tier = CacheTier(cache, eng.metadata)
    assert tier.predict({"input": x_test[:2]}).tiers == ("cache", "cache")
    with pytest.raises(InferenceError, match="no cached answer"):
        tier.predict({"input": x_test[1:3]})
