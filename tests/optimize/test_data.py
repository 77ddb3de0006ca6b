"""Calibration/evaluation data is checked against the model's inputs before anything is built."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.errors import InputError
from edgefleet.optimize._data import iter_batches, load_data, synthetic_feed
from edgefleet.optimize._runner import TensorInfo

F32 = np.dtype(np.float32)
INPUTS = [TensorInfo("input", F32, ("N", 64))]
STATEFUL = [
    TensorInfo("input", F32, ("batch", "sequence")),
    TensorInfo("state", F32, (2, "batch", 128)),
    TensorInfo("sr", np.dtype(np.int64), ()),
]


def test_npz_with_labels_and_batch_axis(tmp_path, rng):
    p = tmp_path / "d.npz"
    np.savez(p, input=rng.random((10, 64), dtype=np.float32), labels=np.arange(10) % 3)
    ds = load_data(p, INPUTS, what="evaluation")
    assert len(ds) == 10
    assert ds.samples[0]["input"].shape == (1, 64)  # the batch axis is added per sample
    assert ds.labels.tolist() == (np.arange(10) % 3).tolist()


def test_npz_with_one_unnamed_array_feeds_a_single_input_model(tmp_path, rng):
    p = tmp_path / "d.npz"
    x = rng.random((5, 64), dtype=np.float32)
    np.savez(p, x, labels=np.arange(5))  # np.savez names a positional array arr_0
    ds = load_data(p, INPUTS, what="evaluation")
    assert len(ds) == 5 and np.array_equal(ds.samples[4]["input"][0], x[4])
    assert ds.labels.tolist() == [0, 1, 2, 3, 4]
    assert any("arr_0" in n for n in ds.notes)
    two = tmp_path / "two.npz"
    np.savez(two, x, x)  # two unnamed arrays: which is which cannot be guessed
    with pytest.raises(InputError, match="arr_1"):
        load_data(two, INPUTS)


def test_limit_keeps_the_first_samples_and_says_so(tmp_path, rng):
    p = tmp_path / "d.npz"
    x = rng.random((10, 64), dtype=np.float32)
    np.savez(p, input=x, labels=np.arange(10))
    ds = load_data(p, INPUTS, limit=4)
    assert len(ds) == 4 and np.array_equal(ds.samples[3]["input"][0], x[3])
    assert ds.labels.tolist() == [0, 1, 2, 3]
    assert any("first 4 of 10" in n for n in ds.notes)


def test_stateful_inputs_keep_their_own_layout(rng):
    data = {
        "input": rng.random((5, 1, 576), dtype=np.float32),
        "state": np.zeros((5, 2, 1, 128), np.float32),
        "sr": np.full(5, 16000, np.int64),
    }
    ds = load_data(data, STATEFUL)
    s = ds.samples[2]
    assert s["input"].shape == (1, 576) and s["state"].shape == (2, 1, 128) and s["sr"].shape == ()
    # state has a fixed axis 0, so samples cannot be stacked: one call per sample
    assert [n for _, n in iter_batches(ds, STATEFUL, 8)] == [1] * 5


def test_batches_stack_along_a_dynamic_batch_axis(rng):
    ds = load_data({"input": rng.random((20, 64), dtype=np.float32)}, INPUTS)
    sizes = [(f["input"].shape[0], n) for f, n in iter_batches(ds, INPUTS, 8)]
    assert sizes == [(8, 8), (8, 8), (4, 4)]


def test_iterables_of_feeds_and_pairs(rng):
    items = [({"input": rng.random(64, dtype=np.float32)}, i % 2) for i in range(6)]
    ds = load_data(iter(items), INPUTS)
    assert len(ds) == 6 and ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    ds2 = load_data([rng.random(64, dtype=np.float32) for _ in range(3)], INPUTS)
    assert len(ds2) == 3 and ds2.labels is None


def test_float64_is_cast_and_noted(rng):
    ds = load_data({"input": rng.random((3, 64))}, INPUTS)
    assert ds.samples[0]["input"].dtype == np.float32
    assert any("cast float64 to float32" in n for n in ds.notes)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"x": np.zeros((3, 64), np.float32)}, "model's inputs are ['input']"),
        ({"input": np.zeros((3, 64), np.int32)}, "dtype int32"),
        ({"input": np.zeros((3, 63), np.float32)}, "shape [1, 63]"),
        ({"input": np.zeros((3, 64, 2), np.float32)}, "shape [64, 2]"),
        ({"input": np.zeros((0, 64), np.float32)}, "no samples"),
        ({"input": np.float32(1.0)}, "scalar"),
        ({"input": np.array([{"a": 1}] * 3, dtype=object)}, "Python objects"),
    ],
)
def test_wrong_names_dtypes_shapes_are_refused(data, fragment):
    with pytest.raises(InputError) as e:
        load_data(data, INPUTS, what="calibration")
    assert fragment in e.value.message
    assert e.value.hint


def test_missing_input_of_a_multi_input_model_is_named(rng):
    with pytest.raises(InputError) as e:
        load_data({"input": rng.random((2, 1, 576), dtype=np.float32), "sr": np.full(2, 16000)}, STATEFUL)
    assert "missing: ['state']" in e.value.message


def test_nan_and_inf_are_refused_with_the_sample_index(rng):
    x = rng.random((6, 64), dtype=np.float32)
    x[4, 7] = np.nan
    with pytest.raises(InputError) as e:
        load_data({"input": x}, INPUTS, what="calibration")
    assert "NaN" in e.value.message and "sample 4" in e.value.message
    x[4, 7] = np.inf
    with pytest.raises(InputError, match="NaN or Inf"):
        load_data({"input": x}, INPUTS)


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (np.arange(5), "6 samples but 5 labels"),
        (np.array([0.5, 1, 2, 3, 4, 5]), "integer class indices"),
        (np.eye(6, 3), "shape [6, 3]"),
        (np.array([0, 1, -1, 2, 3, 4]), "negative"),
        (np.array(["a"] * 6), "dtype"),
    ],
)
def test_bad_labels_are_refused(rng, labels, fragment):
    with pytest.raises(InputError) as e:
        load_data({"input": rng.random((6, 64), dtype=np.float32)}, INPUTS, labels=labels)
    assert fragment in e.value.message


def test_unreadable_files(tmp_path, rng):
    good = tmp_path / "good.npz"
    np.savez(good, input=rng.random((50, 64), dtype=np.float32))
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="cannot be read as .npz"):
        load_data(trunc, INPUTS)
    with pytest.raises(InputError, match="does not exist"):
        load_data(tmp_path / "missing.npz", INPUTS)
    csv = tmp_path / "d.csv"
    csv.write_text("1,2,3")
    with pytest.raises(InputError, match="unknown format"):
        load_data(csv, INPUTS)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="cannot be read as .npy"):
        load_data(obj, INPUTS)  # pickles are never loaded


def test_image_folder_through_a_preprocessing_contract(tmp_path, digits_split):
    pytest.importorskip("PIL")
    from PIL import Image

    for label in (0, 1):
        d = tmp_path / f"class{label}"
        d.mkdir()
        idx = np.flatnonzero(digits_split.y_test == label)[:3]
        for i in idx:
            img = (digits_split.x_test[i].reshape(8, 8) * 255 / 16).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")

    def contract(raw: bytes) -> np.ndarray:
        import io

        return (np.asarray(Image.open(io.BytesIO(raw)), dtype=np.float32) / 255.0).reshape(64)

    ds = load_data(tmp_path, INPUTS, preprocess=contract)
    assert len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.samples[0]["input"].shape == (1, 64)
    with pytest.raises(InputError, match="no preprocessing contract"):
        load_data(tmp_path, INPUTS)


def test_image_folder_with_declarative_steps(tmp_path, digits_split):
    """The same contract code the device runs (edgefleet.bundle.Preprocess) prepares the images."""
    pytest.importorskip("PIL", reason="Pillow (the image extra) is not installed")
    from PIL import Image

    for i in range(4):
        img = (digits_split.x_test[i].reshape(8, 8) * 255 / 16).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    steps = [
        {"op": "decode_image", "mode": "L"},
        {"op": "to_float"},
        {"op": "scale", "factor": 1 / 255},
        {"op": "reshape", "shape": [64]},
    ]
    ds = load_data(tmp_path, INPUTS, preprocess=steps)  # a failure here is a bug, never a skip
    assert len(ds) == 4 and ds.labels is None
    assert np.allclose(ds.samples[1]["input"][0], digits_split.x_test[1] / 16, atol=0.01)


def test_synthetic_feed_needs_sizes_for_symbolic_dims():
    feed = synthetic_feed(INPUTS)
    assert feed["input"].shape == (1, 64)
    with pytest.raises(InputError, match="--dim sequence=N"):
        synthetic_feed(STATEFUL)
    f2 = synthetic_feed(STATEFUL, {"sequence": 576})
    assert f2["input"].shape == (1, 576) and f2["state"].shape == (2, 1, 128)
