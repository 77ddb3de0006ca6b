"""Boundary tests for every limit the validator enforces: exactly at the limit accepted, one past refused.

Properties over the limit values (small limits, so the inputs can sit exactly on them), so an off-by-one
or a forgotten bound on either side cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.errors import PayloadTooLargeError, ValidationError
from edgefleet.protocol import TensorSpec
from edgefleet.runtime import ValidationConfig
from edgefleet.runtime._validation import Validator

FAST = settings(max_examples=60, deadline=None)


def _one(dtype="float32", shape=("batch", 4), value_range=None, **cfg) -> Validator:
    spec = TensorSpec(name="x", dtype=dtype, shape=list(shape), value_range=value_range)
    return Validator([spec], ValidationConfig(**cfg))


@FAST
@given(limit=st.integers(1, 40), rows=st.integers(1, 41))
def test_max_rows_accepts_up_to_the_limit_and_refuses_one_more(limit, rows):
    v = _one(max_rows=limit)
    x = np.zeros((rows, 4), np.float32)
    if rows <= limit:
        assert v.check({"x": x})["x"].shape == (rows, 4)
    else:
        with pytest.raises(PayloadTooLargeError, match=f"{rows} rows, more than the {limit} allowed"):
            v.check({"x": x})


@pytest.mark.parametrize("limit", [1, 2, 50])
def test_max_rows_exact_boundary(limit):
    v = _one(max_rows=limit)
    v.check({"x": np.zeros((limit, 4), np.float32)})
    with pytest.raises(PayloadTooLargeError):
        v.check({"x": np.zeros((limit + 1, 4), np.float32)})


def test_max_rows_only_counts_the_batch_axis():
    """A symbolic non-batch dimension larger than max_rows is not a row count."""
    v = _one(shape=("batch", "n"), max_rows=3)
    assert v.check({"x": np.zeros((3, 10), np.float32)})["x"].shape == (3, 10)


@FAST
@given(limit=st.integers(16, 16 * 30), rows=st.integers(1, 30))
def test_max_payload_bytes_boundary(limit, rows):
    v = _one(max_payload_bytes=limit)
    x = np.zeros((rows, 4), np.float32)  # 16 bytes per row
    if x.nbytes <= limit:
        v.check({"x": x})
    else:
        with pytest.raises(PayloadTooLargeError, match=f"larger than {limit} bytes"):
            v.check({"x": x})


@FAST
@given(a_rows=st.integers(1, 10), b_rows=st.integers(1, 10), slack=st.integers(-1, 1))
def test_max_payload_bytes_counts_every_input_together(a_rows, b_rows, slack):
    """The cap is on the sum over all inputs, not on each one, nor on the last one."""
    specs = [
        TensorSpec(name="a", dtype="float32", shape=["n", 4]),
        TensorSpec(name="b", dtype="float32", shape=["m", 4]),
    ]
    total = 16 * (a_rows + b_rows)
    v = Validator(specs, ValidationConfig(max_payload_bytes=total + slack))
    batch = {"a": np.zeros((a_rows, 4), np.float32), "b": np.zeros((b_rows, 4), np.float32)}
    if slack >= 0:
        v.check(batch)
    else:
        with pytest.raises(PayloadTooLargeError):
            v.check(batch)


def test_max_payload_is_checked_before_the_rows_limit():
    v = _one(max_payload_bytes=16, max_rows=100)
    v.check({"x": np.zeros((1, 4), np.float32)})
    with pytest.raises(PayloadTooLargeError, match="larger than 16 bytes"):
        v.check({"x": np.zeros((2, 4), np.float32)})


RANGES = st.tuples(st.floats(-1e6, 1e6), st.floats(0, 1e6)).map(lambda t: (t[0], t[0] + t[1]))


@FAST
@given(rng=RANGES, x=st.floats(-2e6, 2e6))
def test_value_range_refuses_either_side_and_accepts_inside(rng, x):
    lo, hi = rng
    v = _one(dtype="float64", value_range=(lo, hi))
    batch = {"x": np.full((1, 4), x, np.float64)}
    if lo <= x <= hi:
        v.check(batch)
    else:
        with pytest.raises(ValidationError, match="is outside"):
            v.check(batch)


@FAST
@given(rng=RANGES)
def test_value_range_bounds_are_inclusive_and_one_ulp_past_is_refused(rng):
    lo, hi = rng
    v = _one(dtype="float64", value_range=(lo, hi))
    v.check({"x": np.array([[lo, hi, lo, hi]], np.float64)})
    below = np.nextafter(lo, -np.inf)
    above = np.nextafter(hi, np.inf)
    for bad in (below, above):
        with pytest.raises(ValidationError, match="is outside") as e:
            v.check({"x": np.array([[lo, hi, bad, lo]], np.float64)})
        assert e.value.details["index"] == [0, 2]


def test_value_range_lower_bound_alone():
    v = _one(value_range=(0.0, 1.0))
    with pytest.raises(ValidationError, match=r"value -0.5 at \[0, 1\] is outside \[0.0, 1.0\]"):
        v.check({"x": [[0.0, -0.5, 0.5, 1.0]]})


def test_value_range_applies_to_integer_inputs():
    v = _one(dtype="int32", value_range=(0, 10))
    v.check({"x": np.array([[0, 10, 5, 1]], np.int32)})
    for bad in (-1, 11):
        with pytest.raises(ValidationError, match="is outside"):
            v.check({"x": np.array([[0, bad, 5, 1]], np.int32)})


def test_range_check_can_be_switched_off():
    v = _one(value_range=(0.0, 1.0), check_range=False)
    v.check({"x": [[-5.0, 5.0, 0.0, 0.0]]})


@pytest.mark.parametrize("want", ["int8", "uint8", "int16"])
def test_integer_cast_bounds_are_inclusive(want):
    info = np.iinfo(want)
    v = _one(dtype=want)
    ok = np.array([[info.min, info.max, 0, 1]], np.int64)
    assert v.check({"x": ok})["x"].dtype == np.dtype(want)
    for bad in (int(info.min) - 1, int(info.max) + 1):
        with pytest.raises(ValidationError, match=f"values outside {want}"):
            v.check({"x": np.array([[0, bad, 0, 1]], np.int64)})


def test_float_narrowing_refuses_overflow_but_keeps_the_largest_float32():
    v = _one(dtype="float32")
    biggest = float(np.finfo(np.float32).max)
    out = v.check({"x": np.array([[biggest, -biggest, 0, 0]], np.float64)})
    assert out["x"].dtype == np.float32 and np.isfinite(out["x"]).all()
    with pytest.raises(ValidationError, match="overflows float32"):
        v.check({"x": np.array([[0, 1e39, 0, 0]], np.float64)})


def test_non_finite_refused_at_its_index():
    v = _one()
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValidationError, match=r"non-finite value .* at \[1, 3\]"):
            v.check({"x": np.array([[0, 0, 0, 0], [0, 0, 0, bad]], np.float32)})
    _one(check_finite=False).check({"x": np.array([[np.nan, 0, 0, 0]], np.float32)})


def test_fixed_dimension_must_match_exactly():
    v = _one(shape=("batch", 4))
    for n in (3, 5):
        with pytest.raises(ValidationError, match="at axis 1, the model expects 4"):
            v.check({"x": np.zeros((1, n), np.float32)})


def test_empty_batch_refused():
    with pytest.raises(ValidationError, match="empty at axis 0"):
        _one().check({"x": np.zeros((0, 4), np.float32)})


def test_integer_and_boolean_inputs_are_cast_to_a_float_spec():
    v = _one(dtype="float32")
    out = v.check({"x": np.array([[1, 2, 3, 4]], np.int64)})["x"]
    assert out.dtype == np.float32 and out.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert v.check({"x": np.array([[True, False, True, False]])})["x"].dtype == np.float32


def test_text_inputs_must_be_text():
    v = _one(dtype="string", shape=("batch",))
    assert v.check({"x": ["a", "b"]})["x"].tolist() == ["a", "b"]
    assert v.check({"x": np.array(["a"], dtype=object)})["x"].dtype == object
    with pytest.raises(ValidationError, match="must be text"):
        v.check({"x": np.array([1.0, 2.0])})
