"""Variants measured per execution provider: in this onnxruntime, in another interpreter that has the provider
(onnxruntime-openvino replaces the onnxruntime module, so it lives in its own venv), or reported
"not available here" — never estimated."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from tests.optimize.conftest import make_linear_onnx

from edgefleet.errors import ConfigError
from edgefleet.optimize import optimize
from edgefleet.optimize._providers import provider_names

OPENVINO_PYTHON = os.environ.get("EDGEFLEET_TEST_OPENVINO_PYTHON", "/tmp/ov-venv/bin/python")


@pytest.fixture
def linear(tmp_path):
    """A hand-built 64 -> 10 softmax classifier (no training: the tests stay quick on a loaded machine),
    with 240 evaluation samples."""
    import numpy as np

    model = make_linear_onnx(tmp_path / "linear.onnx", n_in=64, n_out=10)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 64)).astype(np.float32)
    return model, {"x": x[:60]}, {"x": x[60:]}


def test_provider_names():
    assert provider_names("cpu, openvino,CUDA") == [
        "CPUExecutionProvider",
        "OpenVINOExecutionProvider",
        "CUDAExecutionProvider",
    ]
    assert provider_names("TensorrtExecutionProvider,cpu,cpu") == [
        "TensorrtExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(ConfigError, match="'npu9' is unknown"):
        provider_names("cpu,npu9")
    with pytest.raises(ConfigError, match="names no provider"):
        provider_names(" , ")


def _run(tmp_path, model, calib, ev, settings, providers):
    return optimize(
        model,
        calib=calib,
        eval=ev,
        objective="size",
        variants=["fp32", "dynamic-int8"],
        out_dir=tmp_path / "o",
        settings=settings,
        providers=providers,
        exclusion=False,
    )


@pytest.mark.slow
def test_cpu_measured_and_missing_providers_declared_not_measured(tmp_path, linear, fast):
    model, calib, ev = linear
    settings = fast.model_copy(
        update={"provider_runs": 5, "provider_samples": 40, "provider_pythons": {"openvino": sys.executable}}
    )
    rep = _run(tmp_path, model, calib, ev, settings, ["cpu", "cuda", "openvino"])
    cpu, cuda, ov = rep.providers
    assert cpu.status == "measured" and cpu.interpreter is None
    figs = {f.variant: f for f in cpu.variants}
    assert set(figs) == {"fp32", "dynamic-int8"}
    assert (
        figs["fp32"].drop == 0.0
        and figs["fp32"].p50_ms > 0
        and figs["fp32"].ran_on == ["CPUExecutionProvider"]
    )
    # the drop on the provider is measured on its own outputs: dynamic int8 on 40 samples, same as in-process
    assert figs["dynamic-int8"].drop is not None and cpu.best in figs
    assert (
        cuda.status == "not available here" and not cuda.variants and "no CUDAExecutionProvider" in cuda.note
    )
    # the interpreter configured for openvino was asked, and it has no such provider
    assert ov.status == "not available here" and "has no OpenVINOExecutionProvider" in ov.note
    md = (tmp_path / "o" / "report.md").read_text()
    assert "## Execution providers" in md and "| CUDAExecutionProvider | - |" in md and "not measured" in md


def test_an_interpreter_that_cannot_run_is_reported(tmp_path, linear, fast):
    model, calib, ev = linear
    settings = fast.model_copy(update={"provider_pythons": {"openvino": str(tmp_path / "no-such-python")}})
    rep = _run(tmp_path, model, calib, ev, settings, ["openvino"])
    (ov,) = rep.providers
    assert ov.status == "not available here" and "cannot be asked" in ov.note and rep.chosen


@pytest.mark.slow
@pytest.mark.skipif(not Path(OPENVINO_PYTHON).exists(), reason="no venv with onnxruntime-openvino here")
def test_openvino_in_its_own_venv_measures_every_variant(tmp_path, linear, fast):
    model, calib, ev = linear
    settings = fast.model_copy(
        update={"provider_runs": 5, "provider_samples": 40, "provider_pythons": {"openvino": OPENVINO_PYTHON}}
    )
    rep = _run(tmp_path, model, calib, ev, settings, ["openvino"])
    (ov,) = rep.providers
    assert ov.status == "measured" and ov.interpreter == OPENVINO_PYTHON and ov.onnxruntime
    for f in ov.variants:
        assert f.error is None and f.ran_on[0] == "OpenVINOExecutionProvider" and f.p50_ms > 0
        assert f.drop is not None and f.drop < 5.0
