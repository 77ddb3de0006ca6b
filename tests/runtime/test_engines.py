"""Predictor protocol and engines (ONNX Runtime, LiteRT) on real models."""

from __future__ import annotations

import pickle

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.errors import InferenceError, InputError, ModelLoadError
from edgefleet.runtime import EngineConfig, Event, OrtEngine, Prediction, Predictor
from edgefleet.runtime._batcher import Batcher
from edgefleet.runtime._cascade import Cascade
from edgefleet.runtime._engines import LiteRtEngine, load_engine
from edgefleet.runtime._fallback import Fallback

from ._tflite import write_mlp_tflite


def test_prediction_is_a_dict_that_knows_its_tiers():
    p = Prediction(
        {"y": np.arange(3)}, tiers=["primary", "backup", "primary"], events=[Event("fallback", "x")]
    )
    assert isinstance(p, dict) and list(p) == ["y"]
    assert p.tier == "mixed"
    assert Prediction({"y": np.arange(2)}, tiers=["cloud", "cloud"]).tier == "cloud"
    q = pickle.loads(pickle.dumps(p))
    assert q.tiers == p.tiers and q.events == p.events and np.array_equal(q["y"], p["y"])


def test_ort_engine_matches_a_bare_session(digits_mlp, x_test):
    eng = OrtEngine(digits_mlp, name="digits", version="1.0.0", tier="primary")
    bare = ort.InferenceSession(str(digits_mlp), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in bare.get_outputs()], bare.run(None, {"input": x_test[:9]}), strict=True))
    got = eng.predict({"input": x_test[:9]})
    assert set(got) == set(want)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
    assert got.tiers == ("primary",) * 9
    meta = eng.metadata
    assert (meta.name, meta.version, meta.tier) == ("digits", "1.0.0", "primary")
    assert [s.name for s in meta.inputs] == ["input"] and meta.inputs[0].shape[1] == 64
    assert meta.max_batch_size is None
    assert isinstance(eng, Predictor)


def test_every_component_satisfies_the_protocol(digits_mlp, big_mlp):
    small, big = OrtEngine(digits_mlp), OrtEngine(big_mlp, tier="large")
    b = Batcher(small)
    try:
        for p in (small, b, Fallback(small, big), Cascade(b, big)):
            assert isinstance(p, Predictor)
    finally:
        b.close()


def test_engine_config_is_applied(digits_mlp, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_ENGINE_GRAPH_OPTIMIZATION", "basic")
    cfg = EngineConfig(execution_providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert cfg.graph_optimization == "basic"
    eng = OrtEngine(digits_mlp, config=cfg)
    assert eng.providers == ["CPUExecutionProvider"]  # missing providers are skipped, not fatal


def test_fixed_batch_model_runs_any_batch(fixed_batch_model, rng):
    eng = OrtEngine(fixed_batch_model)
    assert eng.metadata.max_batch_size == 1
    x = rng.normal(size=(5, 4)).astype(np.float32)
    got = eng.predict({"x": x})["y"]
    one_by_one = np.concatenate([eng.predict({"x": x[i : i + 1]})["y"] for i in range(5)])
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, one_by_one, rtol=1e-6)


@pytest.mark.parametrize("content", [b"", b"not an onnx model", None])
def test_bad_model_file_is_a_clear_load_error(tmp_path, digits_mlp, content):
    path = tmp_path / "m.onnx"
    if content is None:  # truncated real model
        data = digits_mlp.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError) as e:
        OrtEngine(path)
    assert e.value.hint


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        OrtEngine(tmp_path / "nope.onnx")


def test_wrong_inputs_reach_the_engine_as_clear_errors(digits_mlp, x_test):
    eng = OrtEngine(digits_mlp)
    with pytest.raises(InputError, match="missing"):
        eng.predict({"other": x_test[:1]})
    with pytest.raises(InferenceError) as e:
        eng.predict({"input": x_test[:1, :10]})  # the engine itself does not validate shapes
    assert "failed" in e.value.message


def test_litert_engine_runs_a_real_tflite_model_like_ort(tmp_path, digits_mlp, x_test):
    path = write_mlp_tflite(digits_mlp, tmp_path / "mlp.tflite")
    lite = load_engine(path)
    assert isinstance(lite, LiteRtEngine)
    assert lite.metadata.inputs[0].shape == ["batch", 64]
    ref = OrtEngine(digits_mlp).predict({"input": x_test[:33]})["probabilities"]
    for n in (1, 33, 4):  # dynamic batch: resized on demand, back and forth
        got = lite.predict({"input": x_test[:n]})
        np.testing.assert_allclose(got["probabilities"], ref[:n], atol=1e-5)
        assert got.tiers == ("primary",) * n


def test_litert_fixed_batch_and_manifest_names(tmp_path, digits_mlp, x_test):
    from edgefleet.protocol import TensorSpec

    path = write_mlp_tflite(digits_mlp, tmp_path / "mlp1.tflite", batch=1)
    spec = TensorSpec(name="pixels", dtype="float32", shape=[1, 64])
    lite = LiteRtEngine(path, inputs=[spec])
    assert lite.metadata.max_batch_size == 1
    got = lite.predict({"pixels": x_test[:3]})["probabilities"]
    ref = OrtEngine(digits_mlp).predict({"input": x_test[:3]})["probabilities"]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_litert_bad_file(tmp_path):
    p = tmp_path / "bad.tflite"
    p.write_bytes(b"TFL3 garbage" * 10)
    with pytest.raises(ModelLoadError):
        LiteRtEngine(p)
