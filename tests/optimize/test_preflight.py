"""Pre-flight warnings and graph facts."""

from __future__ import annotations

import onnx
import pytest

from edgefleet.optimize import DeviceProfile, OptimizeConfig, Variant
from edgefleet.optimize._graph import analyze, missing_kernels, target_runtime_issues
from edgefleet.optimize._preflight import preflight

from .conftest import make_linear_onnx

S = OptimizeConfig()


def _codes(model, prof, names):
    return {w.code for w in preflight(model, analyze(model), prof, [Variant.parse(n) for n in names], S)}


def test_no_vnni_is_warned_only_when_int8_variants_are_built(tmp_path):
    m = onnx.load(str(make_linear_onnx(tmp_path / "m.onnx")))
    old_x86 = DeviceProfile(arch="x86_64", isa_flags=["avx2"])
    assert "no_int8_dot" in _codes(m, old_x86, ["fp32", "dynamic-int8"])
    assert "no_int8_dot" not in _codes(m, old_x86, ["fp32", "fp16"])
    assert "no_int8_dot" not in _codes(
        m, DeviceProfile(arch="x86_64", isa_flags=["avx512_vnni"]), ["dynamic-int8"]
    )
    arm_no_dot = DeviceProfile(arch="aarch64", isa_flags=["asimd"])
    assert "no_int8_dot" in _codes(m, arm_no_dot, ["static-int8-pt-minmax"])


def test_qoperator_on_x86_and_old_opset(tmp_path):
    m = onnx.load(str(make_linear_onnx(tmp_path / "m.onnx", opset=11)))
    codes = _codes(m, DeviceProfile(arch="x86_64", isa_flags=["avx512_vnni"]), ["static-int8-pt-minmax-qop"])
    assert {"qoperator_on_x86", "old_opset"} <= codes
    assert "qoperator_on_x86" not in _codes(
        m, DeviceProfile(arch="aarch64", isa_flags=["asimddp"]), ["static-int8-pt-minmax-qop"]
    )


def test_target_runtime_opsets_and_contrib_ops(tmp_path):
    m = onnx.load(str(make_linear_onnx(tmp_path / "m.onnx", opset=19)))
    assert target_runtime_issues(m, "1.14") == [
        "opset 19 needs onnxruntime newer than 1.14 (which runs opset <= 18)"
    ]
    assert target_runtime_issues(m, "1.17") == []
    m.graph.node[0].op_type = "MatMulNBits"
    m.graph.node[0].domain = "com.microsoft"
    assert "MatMulNBits needs onnxruntime >= 1.17" in target_runtime_issues(m, "1.16")
    codes = _codes(m, DeviceProfile(onnxruntime="1.16"), ["int4"])
    assert "target_runtime" in codes


def test_missing_kernels_name_the_op(tmp_path):
    m = onnx.load(str(make_linear_onnx(tmp_path / "m.onnx")))
    assert missing_kernels(m) == []
    m.graph.node[1].op_type = "NoSuchOp"
    m.graph.node[1].domain = "com.example"
    assert missing_kernels(m) == ["com.example.NoSuchOp"]
    assert "unsupported_ops" in _codes(m, DeviceProfile(), ["fp32"])


def test_weight_shares_count_multiply_adds(tmp_path):
    m = onnx.load(str(make_linear_onnx(tmp_path / "m.onnx")))
    f = analyze(m)
    assert f.matmul_share == pytest.approx(1.0) and f.conv_share == 0.0 and f.opset == 17


@pytest.mark.torch
def test_conv_heavy_models_warn_about_dynamic_quantization(tmp_path, digits_cnn):
    import numpy as np

    from edgefleet.optimize._convert import load_source

    src = load_source(digits_cnn, tmp_path, example_inputs=np.zeros((1, 1, 8, 8), np.float32))
    m = onnx.load(str(src.path))
    f = analyze(m)
    assert f.conv_share > 0.5  # by multiply-adds; by weight count the Linear layers would dominate
    assert "dynamic_on_conv" in _codes(m, DeviceProfile(isa_flags=["avx512_vnni"]), ["dynamic-int8"])
    assert "dynamic_on_conv" not in _codes(
        m, DeviceProfile(isa_flags=["avx512_vnni"]), ["static-int8-pt-minmax"]
    )
