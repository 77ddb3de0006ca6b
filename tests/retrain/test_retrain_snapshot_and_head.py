"""Data snapshots (round trip, tampering, hostile files) and the built-in head retrainer on real models."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from conftest import shift
from edgefleet.errors import InputError, ModelLoadError
from edgefleet.retrain import find_head, load_snapshot, retrain_head, snapshot_hash, write_snapshot


def _accuracy(path, x, y) -> float:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(np.mean(s.run(["label"], {"input": (x / 16).astype(np.float32)})[0].ravel() == y))


def test_snapshot_round_trip_keeps_rows_ids_and_hash(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    y = np.array([0, 1] * 5)
    snap = write_snapshot(
        tmp_path / "s", x, y, sample_ids=[f"r{i}" for i in range(10)], source={"region": "north"}
    )
    again = load_snapshot(tmp_path / "s")
    assert np.array_equal(again.x, x) and np.array_equal(again.y, y)
    assert again.sample_ids == [f"r{i}" for i in range(10)]
    assert again.sha256 == snap.sha256 == snapshot_hash(x, y)
    assert again.labels == {"0": 5, "1": 5} and again.source == {"region": "north"}
    # the hash is of the rows: one changed label changes it
    assert snapshot_hash(x, np.array([1, 1] + [0, 1] * 4)) != snap.sha256


def test_snapshot_refuses_altered_rows_and_bad_files(tmp_path):
    x, y = np.ones((6, 3), np.float32), np.array([0, 1, 2, 0, 1, 2])
    write_snapshot(tmp_path / "s", x, y)
    np.savez_compressed(tmp_path / "s" / "data.npz", x=x, y=np.array([2, 1, 2, 0, 1, 2]))  # relabelled
    with pytest.raises(InputError, match="does not match the manifest"):
        load_snapshot(tmp_path / "s")
    with pytest.raises(InputError, match="not a data snapshot"):
        load_snapshot(tmp_path / "nothing")
    (tmp_path / "s" / "data.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="not a readable npz"):
        load_snapshot(tmp_path / "s")
    np.savez(tmp_path / "s" / "data.npz", x=np.array([object()] * 6, dtype=object), y=y)
    with pytest.raises(InputError, match="Python objects"):
        load_snapshot(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        load_snapshot(tmp_path / "s")


def test_snapshot_refuses_an_array_header_promising_too_much(tmp_path):
    write_snapshot(tmp_path / "s", np.ones((4, 2), np.float32), np.array([0, 1, 0, 1]))
    # a 2^40-row float header with no data behind it: refused from the header, nothing allocated
    header = np.lib.format.header_data_from_array_1_0(np.ones((1, 2), np.float32))
    header["shape"] = (1 << 22, 1 << 18)
    with zipfile.ZipFile(tmp_path / "s" / "data.npz", "w") as z:
        with z.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
        with z.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.array([0, 1, 0, 1]))
    with pytest.raises(InputError, match="MiB of arrays"):
        load_snapshot(tmp_path / "s")


def test_snapshot_writer_checks_its_rows(tmp_path):
    with pytest.raises(InputError, match="one label per row"):
        write_snapshot(tmp_path / "a", np.ones((3, 2)), np.array([0, 1]))
    with pytest.raises(InputError, match="not integers"):
        write_snapshot(tmp_path / "b", np.ones((2, 2)), np.array([0.5, 1.0]))
    with pytest.raises(InputError, match="sample ids"):
        write_snapshot(tmp_path / "c", np.ones((2, 2)), np.array([0, 1]), sample_ids=["only-one"])
    write_snapshot(tmp_path / "d", np.ones((2, 2)), np.array([0, 1]))
    with pytest.raises(InputError, match="not empty"):
        write_snapshot(tmp_path / "d", np.ones((2, 2)), np.array([0, 1]))


def test_head_refit_restores_accuracy_on_shifted_digits_and_keeps_the_body(
    tmp_path, digits_mlp, digits_split
):
    import onnx
    from onnx import numpy_helper

    d = digits_split
    n = 300
    x = np.concatenate([d.x_train, shift(d.x_train[:n])])
    y = np.concatenate([d.y_train, d.y_train[:n]])
    info = retrain_head(digits_mlp, tmp_path / "new.onnx", {"input": (x / 16).astype(np.float32)}, y)
    shifted_test = shift(d.x_test)
    before, after = (
        _accuracy(digits_mlp, shifted_test, d.y_test),
        _accuracy(tmp_path / "new.onnx", shifted_test, d.y_test),
    )
    assert before < 0.5 and after > 0.7, (before, after)
    assert _accuracy(tmp_path / "new.onnx", d.x_test, d.y_test) > 0.9  # the unshifted data still served
    old, new = onnx.load(str(digits_mlp)), onnx.load(str(tmp_path / "new.onnx"))
    head = find_head(old)
    assert info["head"]["weight"] == head.weight and info["classes"] == 10
    changed = {
        i.name
        for i, j in zip(old.graph.initializer, new.graph.initializer, strict=True)
        if not np.array_equal(numpy_helper.to_array(i), numpy_helper.to_array(j))
    }
    assert changed == {head.weight, head.bias}
    assert [n.op_type for n in old.graph.node] == [n.op_type for n in new.graph.node]


def test_head_refit_refuses_models_without_a_head_and_foreign_labels(tmp_path, digits_mlp):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "nohead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    onnx.save(helper.make_model(g), str(tmp_path / "relu.onnx"))
    with pytest.raises(ModelLoadError, match="no classification head") as e:
        retrain_head(
            tmp_path / "relu.onnx",
            tmp_path / "o.onnx",
            {"x": np.ones((4, 4), np.float32)},
            np.array([0, 1, 0, 1]),
        )
    assert "--trainer" in e.value.hint
    feeds = {"input": np.ones((4, 64), np.float32)}
    with pytest.raises(InputError, match="10 classes"):
        retrain_head(digits_mlp, tmp_path / "o.onnx", feeds, np.array([0, 1, 12, 3]))
    with pytest.raises(InputError, match="one class"):
        retrain_head(digits_mlp, tmp_path / "o.onnx", feeds, np.array([3, 3, 3, 3]))
    assert not (tmp_path / "o.onnx").exists()
    # manifest json stays readable: a snapshot's manifest names its format
    write_snapshot(tmp_path / "s", np.ones((2, 2)), np.array([0, 1]))
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["format"] == "edgefleet.snapshot/1"
