"""Reference statistics: feature summaries and the reference.json shape telemetry relies on."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.bundle import compute_reference, summarize_features
from edgefleet.bundle._reference import SUMMARY_FEATURES, confidence_from_outputs
from edgefleet.errors import InputError


def test_small_inputs_keep_every_value(rng):
    x = rng.normal(size=(7, 4, 4)).astype(np.float32)
    names, m = summarize_features(x)
    assert names == [f"f{i}" for i in range(16)]
    np.testing.assert_allclose(m, x.reshape(7, 16))


def test_large_inputs_are_summarised_per_sample(rng):
    x = rng.normal(3.0, 2.0, size=(5, 3, 32, 32))
    x[0] = 0.0
    names, m = summarize_features(x)
    assert names == SUMMARY_FEATURES
    assert m.shape == (5, len(SUMMARY_FEATURES))
    col = dict(zip(names, m.T, strict=True))
    np.testing.assert_allclose(col["mean"][1:], x[1:].reshape(4, -1).mean(axis=1))
    np.testing.assert_allclose(col["max"], x.reshape(5, -1).max(axis=1))
    assert col["zero_frac"][0] == 1.0 and col["std"][0] == 0.0
    assert abs(col["q50"][1:].mean() - 3.0) < 0.1


def test_summarize_refuses_bad_input():
    with pytest.raises(InputError, match="non-empty batch"):
        summarize_features(np.zeros((0, 3)))
    with pytest.raises(InputError, match="numbers"):
        summarize_features(np.array([["a"]]))


def test_reference_shape_and_counts(rng):
    n = 800
    x = np.stack([rng.normal(size=n), rng.exponential(size=n), np.full(n, 2.5)], axis=1)
    logits = rng.normal(size=(n, 4)) * 3
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ref = compute_reference(x, ["a", "b", "const"], p, labels=["w", "x", "y", "z"])
    assert ref["schema_version"] == 1 and ref["count"] == n
    for f in ref["features"]:
        assert set(f) >= {"name", "bins", "counts", "mean", "std", "min", "max", "quantiles", "sample"}
        assert len(f["counts"]) == len(f["bins"]) - 1 and 1 <= len(f["counts"]) <= 20
        assert sum(f["counts"]) == n
        assert list(f["quantiles"]) == ["0.01", "0.05", "0.25", "0.5", "0.75", "0.95", "0.99"]
        assert len(f["sample"]) == 500
    a = ref["features"][0]
    assert abs(a["mean"]) < 0.15 and abs(a["std"] - 1) < 0.1
    assert a["bins"] == sorted(a["bins"])
    const = ref["features"][2]
    assert const["min"] == const["max"] == 2.5 and const["counts"] == [n]
    conf = ref["confidence"]
    assert len(conf["bins"]) == 21 and conf["bins"][0] == 0.0 and conf["bins"][-1] == 1.0
    assert sum(conf["counts"]) == n
    assert conf["mean"] == pytest.approx(p.max(axis=1).mean())
    assert ref["classes"]["labels"] == ["w", "x", "y", "z"]
    assert ref["classes"]["counts"] == np.bincount(p.argmax(axis=1), minlength=4).tolist()


def test_reference_is_deterministic_and_sampled_from_data(rng):
    x = rng.normal(size=(1000, 2))
    r1 = compute_reference(x, ["a", "b"], None)
    r2 = compute_reference(x, ["a", "b"], None)
    assert r1 == r2
    assert r1["confidence"] is None and r1["classes"] is None
    sample = np.array(r1["features"][0]["sample"])
    nearest = np.abs(sample[:, None] - x[None, :, 0]).min(axis=1)
    assert (nearest <= 1e-6 * np.maximum(1, np.abs(sample))).all()  # every sampled value is a data value


def test_reference_refuses_bad_input(rng):
    with pytest.raises(InputError, match="NaN"):
        compute_reference(np.array([[np.nan]]), ["a"])
    with pytest.raises(InputError, match=r"\(batch, 2\)"):
        compute_reference(np.zeros((3, 1)), ["a", "b"])
    with pytest.raises(InputError, match="3 labels for 2 classes"):
        compute_reference(np.zeros((3, 1)), ["a"], np.full((3, 2), 0.5), labels=["x", "y", "z"])


def test_confidence_with_softmax():
    logits = np.array([[0.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(
        confidence_from_outputs(logits, apply_softmax=True), [0.5, 1 / (1 + np.exp(-10))]
    )
