"""Runtime fixtures: real models, a real bundle, a real cloud endpoint on loopback, and fault doubles."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from edgefleet.errors import InferenceError
from edgefleet.runtime import Prediction, PredictorMetadata


@pytest.fixture(scope="session")
def big_mlp(tmp_path_factory, digits_split) -> Path:
    """Another digits MLP (trained differently): the escalation tier, the backup and the cloud model."""
    from edgefleet.examples import train_digits_mlp

    path = tmp_path_factory.mktemp("models") / "digits_big.onnx"
    train_digits_mlp(path, hidden=(32,), data=digits_split, seed=3, max_iter=200)
    return path


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory, digits_mlp, digits_split) -> Path:
    """A real bundle: contract scales raw pixels [0, 16] by 1/16; labels 'zero'..'nine'."""
    from edgefleet.bundle import create_bundle
    from edgefleet.protocol import Postprocess

    out = tmp_path_factory.mktemp("bundles") / "digits-1.0.0.tar"
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return create_bundle(
        digits_mlp,
        out,
        name="digits",
        version="1.0.0",
        variant="cpu",
        inputs_raw=digits_split.x_test[:16],
        preprocess=[{"op": "scale", "factor": 1 / 16}],
        postprocess=Postprocess(labels=names),
    )


@pytest.fixture(scope="session")
def digits_bundle_v2(tmp_path_factory, digits_mlp_v2, digits_split) -> Path:
    from edgefleet.bundle import create_bundle

    out = tmp_path_factory.mktemp("bundles") / "digits-1.1.0.tar"
    return create_bundle(
        digits_mlp_v2,
        out,
        name="digits",
        version="1.1.0",
        variant="cpu",
        inputs_raw=digits_split.x_test[:16],
        preprocess=[{"op": "scale", "factor": 1 / 16}],
    )


@pytest.fixture(scope="session")
def fixed_batch_model(tmp_path_factory) -> Path:
    """A linear model built with onnx.helper whose batch dimension is fixed to 1: y = x @ W + b."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("models") / "fixed1.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def x_test(digits_split) -> np.ndarray:
    """Model-ready digits inputs (scaled to [0, 1])."""
    return (digits_split.x_test / 16).astype(np.float32)


# --- fault-injecting test doubles ---------------------------------------------------------------------


class Recording:
    """Wraps a predictor and records every batch it runs (to prove what ran and what did not)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[dict[str, np.ndarray]] = []
        self.lock = threading.Lock()

    @property
    def metadata(self) -> PredictorMetadata:
        return self.inner.metadata

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        with self.lock:
            self.calls.append(batch)
        return self.inner.predict(batch, **opts)

    def close(self) -> None:
        self.inner.close()


class Flaky(Recording):
    """Fault-injecting double: fails a fraction of calls (seeded) with an InferenceError."""

    def __init__(self, inner: Any, fail_rate: float, seed: int = 0) -> None:
        super().__init__(inner)
        self.fail_rate = fail_rate
        self.rng = np.random.default_rng(seed)
        self.failures = 0

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        with self.lock:
            fail = self.rng.random() < self.fail_rate
            if fail:
                self.failures += 1
        if fail:
            raise InferenceError("injected failure")
        return super().predict(batch, **opts)


class Gate(Recording):
    """Fault-injecting double: a model that hangs until ``release()`` (or for ``hang_s``)."""

    def __init__(self, inner: Any, hang_s: float | None = None) -> None:
        super().__init__(inner)
        self.open = threading.Event()
        self.entered = threading.Event()
        self.entries = 0  # calls that reached the model (hung or not)
        self.hang_s = hang_s

    def release(self) -> None:
        self.open.set()

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        with self.lock:
            self.entries += 1
        self.entered.set()
        self.open.wait(self.hang_s)
        return super().predict(batch, **opts)


class Raising(Recording):
    """Fault-injecting double: every call raises ``exc``."""

    def __init__(self, inner: Any, exc: Exception) -> None:
        super().__init__(inner)
        self.exc = exc

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> Prediction:
        super().predict(batch, **opts)
        raise self.exc


@pytest.fixture
def doubles():
    """The fault-injecting doubles, as a namespace."""
    import types

    return types.SimpleNamespace(Recording=Recording, Flaky=Flaky, Gate=Gate, Raising=Raising)


# --- a real cloud endpoint on loopback --------------------------------------------------------------


class CloudApp:
    """A FastAPI 'cloud model' on 127.0.0.1 that can be ok, slow, erroring or answering garbage."""

    def __init__(self, model_path: Path) -> None:
        import uvicorn

        from edgefleet.runtime import OrtEngine

        self.engine = OrtEngine(model_path, tier="cloud")
        self.mode = "ok"
        self.delay_s = 1.0
        self.calls = 0
        self.received: list[dict] = []
        app = FastAPI()

        @app.post("/v1/predict")
        async def predict(request: Request) -> Any:
            import asyncio

            self.calls += 1
            body = await request.json()
            self.received.append(body)
            if self.mode == "slow":
                await asyncio.sleep(self.delay_s)
            if self.mode == "error":
                return JSONResponse({"error": "boom"}, status_code=500)
            if self.mode == "garbage":
                return PlainTextResponse("<html>not json</html>")
            if self.mode == "wrong_shape":
                return JSONResponse({"outputs": {"probabilities": [[0.1, 0.9]]}})
            x = np.asarray(body["inputs"]["input"], dtype=np.float32)
            out = self.engine.predict({"input": x})
            return {"outputs": {k: v.tolist() for k, v in out.items()}}

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/predict"
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="error", lifespan="off", timeout_graceful_shutdown=1)
        )
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        self._sock = sock

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@pytest.fixture
def cloud(big_mlp):
    app = CloudApp(big_mlp)
    yield app
    app.stop()


@pytest.fixture
def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1/predict"
