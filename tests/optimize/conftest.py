"""Fixtures of the optimizer tests: real small models and data, fast measurement settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.optimize import DeviceProfile, OptimizeConfig


@pytest.fixture(scope="session")
def fast() -> OptimizeConfig:
    """Few timed runs: the tests check behaviour, not speed."""
    return OptimizeConfig(
        runs=15,
        warmup_runs=2,
        throughput_runs=2,
        throughput_batches=(1, 8),
        interleave_rounds=3,
        interleave_runs=3,
        interleave_round_s=0.002,
        measure_memory=False,
        max_calib_samples=64,
        max_eval_samples=240,
        parity_samples=4,
        debug_samples=8,
    )


@pytest.fixture(scope="session")
def one_core() -> DeviceProfile:
    return DeviceProfile(name="test-1core", cores=1)


@pytest.fixture(scope="session")
def mlp_npz(tmp_path_factory, digits_split) -> tuple[Path, Path]:
    """Calibration and evaluation .npz files for the digits MLP (input 'input' = x / 16, labels)."""
    d = tmp_path_factory.mktemp("mlpdata")
    calib = d / "calib.npz"
    ev = d / "eval.npz"
    np.savez(calib, input=(digits_split.x_train[:64] / 16).astype(np.float32))
    np.savez(ev, input=(digits_split.x_test / 16).astype(np.float32), labels=digits_split.y_test)
    return calib, ev


@pytest.fixture(scope="session")
def digits_cnn(digits_split):
    """A small torch CNN trained for two epochs on digits (input [N, 1, 8, 8])."""
    pytest.importorskip("torch")
    from edgefleet.optimize._zoo import train_digits_cnn

    model, acc = train_digits_cnn(digits_split, channels=(8, 16), hidden=32, epochs=3)
    assert acc > 0.7, f"the test CNN did not learn (accuracy {acc:.2f})"
    return model


@pytest.fixture(scope="session")
def digits_encoder(digits_split):
    """A tiny transformer-style encoder trained briefly on digits (input [N, 8, 8])."""
    pytest.importorskip("torch")
    from edgefleet.optimize._zoo import train_digits_encoder

    model, acc = train_digits_encoder(digits_split, d_model=32, heads=2, layers=1, epochs=6, lr=4e-3)
    assert acc > 0.5, f"the test encoder did not learn (accuracy {acc:.2f})"
    return model


def make_linear_onnx(path: Path, *, opset: int = 17, n_in: int = 4, n_out: int = 3, seed: int = 0) -> Path:
    """A hand-built MatMul + Add + Softmax classifier at any opset (for opset and error tests)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "B")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "B"], ["logits"], name="add"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    g = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out])],
        [w, b],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.save_model(m, str(path))
    return path


def list_dir(p: Path) -> list[str]:
    """Everything under ``p`` (relative), including hidden temp directories."""
    return sorted(str(x.relative_to(p)) for x in p.rglob("*")) if p.exists() else []


def make_outlier_mlp(path: Path, seed: int = 0) -> Path:
    """A 2-layer MLP whose first weight matrix has one huge entry on input feature 0, which the data keeps
    at zero (see ``outlier_data``): per-tensor int8 then rounds every other weight of ``mm_outlier`` to
    zero, while activations and ``mm_out`` quantize well. Exactly one sensitive node, to test the
    ranking and the exclusion."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 64)).astype(np.float32) * 0.3
    w1[0, 0] = 1000.0
    w2 = rng.standard_normal((64, 8)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm_outlier"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm_out"),
    ]
    g = helper.make_graph(
        nodes,
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(m, str(path))
    return path


def outlier_data(n: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    x[:, 0] = 0.0
    return x
