"""torch modules: exported, checked against torch, optimized (conv CNN and a transformer-style encoder)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgefleet.errors import OptimizeError
from edgefleet.optimize import optimize
from edgefleet.optimize._convert import load_source

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")


def _cnn_data(split, n_calib=64):
    calib = {"input": (split.x_train[:n_calib] / 16).reshape(-1, 1, 8, 8).astype(np.float32)}
    ev = {"input": (split.x_test / 16).reshape(-1, 1, 8, 8).astype(np.float32), "labels": split.y_test}
    return calib, ev


def test_cnn_export_matches_torch(tmp_path, digits_cnn, digits_split, fast):
    calib, _ = _cnn_data(digits_split)
    src = load_source(digits_cnn, tmp_path, example_inputs=calib["input"][:1], settings=fast)
    assert src.export_max_abs_err is not None and src.export_max_abs_err < 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(src.path))
    x = (digits_split.x_test[:7] / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    with torch.no_grad():
        ref = digits_cnn(torch.from_numpy(x)).numpy()
    got = sess.run(None, {"input": x})[0]  # batch 7: the batch axis is dynamic
    assert np.allclose(got, ref, atol=1e-4)


def test_cnn_optimized_with_conv_warning(tmp_path, digits_cnn, digits_split, fast, one_core):
    calib, ev = _cnn_data(digits_split)
    rep = optimize(
        digits_cnn,
        calib=calib,
        eval=ev,
        profile=one_core,
        objective="size",
        variants=["fp32", "dynamic-int8", "static-int8-pc-minmax"],
        out_dir=tmp_path / "o",
        settings=fast,
    )
    assert rep.source == "torch Sequential" and any("max abs error vs torch" in n for n in rep.source_notes)
    assert any(w["code"] == "dynamic_on_conv" for w in rep.warnings)
    st = rep.variant("static-int8-pc-minmax")
    assert st.status == "ok" and st.size_ratio > 2
    assert abs(st.drop) <= 3  # int8 keeps a CNN's accuracy within a few points
    assert rep.chosen in ("dynamic-int8", "static-int8-pc-minmax")


def test_encoder_gets_int4_as_matmul_heavy(tmp_path, digits_encoder, digits_split, fast, one_core):
    calib = {"input": (digits_split.x_train[:64] / 16).reshape(-1, 8, 8).astype(np.float32)}
    ev = {
        "input": (digits_split.x_test / 16).reshape(-1, 8, 8).astype(np.float32),
        "labels": digits_split.y_test,
    }
    out = tmp_path / "o"
    rep = optimize(
        digits_encoder,
        calib=calib,
        eval=ev,
        profile=one_core,
        objective="size",
        max_drop=5,
        variants=None,
        out_dir=out,
        keep_variants=True,
        settings=fast,
    )
    names = [v.name for v in rep.variants]
    assert "int4" in names  # built by default because MatMul weights dominate
    int4 = rep.variant("int4")
    assert int4.status == "ok", int4.error
    m = onnx.load(str(out / "variants" / "int4.onnx"))
    assert any(n.op_type == "MatMulNBits" for n in m.graph.node)
    assert int4.size_ratio > rep.variant("dynamic-int8").size_ratio * 0.9
    # fp16 of a torch-exported encoder needs the converter's Cast workaround; it must still load and run
    fp16 = rep.variant("fp16")
    assert fp16.status == "ok", fp16.error
    assert fp16.quality.agreement > 0.95


def test_export_that_disagrees_with_torch_is_refused(tmp_path, fast):
    class BatchDependent(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] == 1:  # traced once at batch 1: the export bakes this branch in
                return x * 2
            return x * 3

    with pytest.raises(OptimizeError, match="disagrees"):
        load_source(BatchDependent(), tmp_path, example_inputs=np.ones((1, 4), np.float32), settings=fast)


def test_export_needs_example_inputs(tmp_path, digits_cnn, fast):
    from edgefleet.errors import InputError

    with pytest.raises(InputError, match="example inputs"):
        load_source(digits_cnn, tmp_path, settings=fast)


def test_module_that_cannot_run_on_the_example(tmp_path, digits_cnn, fast):
    with pytest.raises(Exception) as e:  # torch itself rejects the shape; nothing is written
        load_source(
            digits_cnn, tmp_path / "w", example_inputs=np.ones((1, 3, 8, 8), np.float32), settings=fast
        )
    assert "channels" in str(e.value) or "size" in str(e.value)
    assert not (tmp_path / "w" / "source.onnx").exists()
