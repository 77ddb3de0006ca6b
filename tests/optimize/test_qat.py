"""Quantization-aware training: fake-quant fine-tuning exported as QDQ ONNX with int8 weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def test_qat_exports_qdq_with_int8_weights_that_onnxruntime_runs(tmp_path, digits_cnn, digits_split):
    import onnx
    import onnxruntime as ort

    from edgefleet.optimize._distill import DistillConfig, accuracy
    from edgefleet.optimize._qat import export_qdq, qat

    x = (digits_split.x_train / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    xte = (digits_split.x_test / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    yte = digits_split.y_test
    q, res = qat(digits_cnn, x, digits_split.y_train, config=DistillConfig(epochs=2, lr=1e-3))
    assert len(res.log) == 2
    fq = [m for m in q.modules() if type(m).__name__ == "FakeQuantize"]
    assert len(fq) == 2 * 5 and all(not bool(m.observer_enabled) for m in fq)  # 5 layers, frozen
    path = export_qdq(q, x[:1], tmp_path / "qat.onnx")
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") == 5 and ops.count("DequantizeLinear") == 10  # weights folded
    int8 = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    assert len(int8) == 5 and {tuple(i.dims) for i in int8} >= {(8, 1, 3, 3), (10, 32)}
    assert not [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) > 1]
    got = ort.InferenceSession(str(path)).run(None, {"input": xte})[0]
    acc_onnx = float((got.argmax(1) == yte).mean())
    assert abs(acc_onnx - accuracy(q, xte, yte)) <= 0.01  # the file computes what was trained
    assert acc_onnx >= accuracy(digits_cnn, xte, yte) - 0.03
    # the original float model is untouched
    assert not any(type(m).__name__ == "FakeQuantize" for m in digits_cnn.modules())
