"""Telemetry fixtures: a real ONNX Runtime predictor on the digits MLP and its reference statistics."""

from __future__ import annotations

import numpy as np
import pytest


class OnnxPredictor:
    """A minimal real predictor (an onnxruntime session), independent of the runtime package."""

    def __init__(self, path, fail_on=None) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.fail_on = fail_on  # rows count that raises, to test error accounting
        self.metadata = None
        self.closed = False

    def predict(self, batch, **opts):
        x = np.asarray(batch["input"], dtype=np.float32)
        if self.fail_on is not None and len(x) == self.fail_on:
            from edgefleet.errors import InferenceError

            raise InferenceError("injected failure for this batch size")
        label, probs = self.session.run(None, {"input": x})
        return {"label": label, "probabilities": probs}

    def close(self) -> None:
        self.closed = True


class FakeClock:
    """Monotonic and wall clocks the test moves by hand."""

    def __init__(self, t0: float = 1_700_000_000.0) -> None:
        self.t, self.t0 = 0.0, t0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t0 + self.t


class MockSensors:
    """A named mock for the temperature and battery sensors this machine does not have."""

    def __init__(self, temperature_c: float = 48.5, battery_percent: float = 87.0) -> None:
        self.values = {"temperature_c": temperature_c, "battery_percent": battery_percent}

    def __call__(self):
        return dict(self.values)


@pytest.fixture(scope="session")
def digits_predictor(digits_mlp):
    return OnnxPredictor(digits_mlp)


@pytest.fixture(scope="session")
def digits_reference(digits_predictor, digits_split):
    """reference.json content for the digits MLP, built by the bundle's own compute_reference."""
    from edgefleet.bundle import compute_reference, summarize_features

    x = digits_split.x_train / 16.0
    probs = digits_predictor.predict({"input": x})["probabilities"]
    names, feats = summarize_features(x)
    return compute_reference(feats, names, probs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def onnx_predictor():
    """The OnnxPredictor class (tests build their own with failure injection)."""
    return OnnxPredictor


@pytest.fixture
def mock_sensors():
    return MockSensors
