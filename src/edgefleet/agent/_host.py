"""What serves the active model inside the agent: hot-swappable inference, live figures, local API."""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import InferenceError, ModelLoadError, NotFoundError
from edgefleet.protocol import ModelHealth

__all__ = ["RuntimeHost"]

log = logging.getLogger(__name__)


class _Loaded:
    """One loaded bundle: its contract and a session (runtime engine when available)."""

    def __init__(self, bundle_dir: Path) -> None:
        from edgefleet.bundle import Bundle

        self.bundle = Bundle.from_dir(bundle_dir, check=False)  # the store verified it
        self.runner = self.bundle.runner()
        self.key = self.bundle.manifest.key
        self.output = self.bundle.manifest.postprocess.output

    def predict(self, raw: Any) -> dict[str, np.ndarray]:
        return self.runner.run(self.bundle.model_inputs(raw))


class RuntimeHost:
    """Serves the active bundle; swapping in a new one never drops a request.

    Requests take a reference to the loaded model under a lock and run outside it, so a swap waits for
    nobody and requests in flight finish on the model they started with.

    Args:
        shadow_rate: fraction of live requests kept (input and answer) for a candidate's shadow run.
        shadow_keep: most samples kept.
        window: most latency/confidence figures kept between two ``health(reset=True)`` calls.
    """

    def __init__(
        self,
        *,
        shadow_rate: float = 0.1,
        shadow_keep: int = 200,
        window: int = 10_000,
        seed: int | None = None,
    ) -> None:
        self._model: _Loaded | None = None
        self._lock = threading.Lock()
        self.loaded: Path | None = None
        self.shadow_rate = shadow_rate
        self._shadow: collections.deque[tuple[Any, dict[str, np.ndarray]]] = collections.deque(
            maxlen=shadow_keep
        )
        self._rng = random.Random(seed)
        self._window = window
        self._reset_stats()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _reset_stats(self) -> None:
        self.requests = 0
        self.errors = 0
        self._lat: collections.deque[float] = collections.deque(maxlen=self._window)
        self._conf: collections.deque[float] = collections.deque(maxlen=self._window)

    # --- model ---------------------------------------------------------------------------------

    def load(self, bundle_dir: Path) -> None:
        """Load (or hot swap to) the bundle unpacked at ``bundle_dir``.

        Raises:
            ModelLoadError: the model cannot be loaded; the previous one keeps serving.
        """
        new = _Loaded(Path(bundle_dir))
        with self._lock:
            old, self._model = self._model, new
            self.loaded = Path(bundle_dir)
            self._shadow.clear()  # samples were answered by the old model
        log.info(
            "serving %s", new.key, extra={"bundle": str(bundle_dir), "swapped_from": old.key if old else None}
        )

    @property
    def model_key(self) -> str | None:
        m = self._model
        return m.key if m else None

    def predict(self, raw: Any) -> dict[str, np.ndarray]:
        """Run the active model on raw inputs (the bundle's contract applies)."""
        with self._lock:
            m = self._model
        if m is None:
            raise NotFoundError("no model is active on this device yet", hint="wait for the first assignment")
        t0 = time.perf_counter()
        try:
            out = m.predict(raw)
        except Exception as e:
            with self._lock:
                self.requests += 1
                self.errors += 1
            if isinstance(e, InferenceError | ModelLoadError):
                raise
            raise InferenceError(f"model {m.key} failed: {e}") from e
        ms = (time.perf_counter() - t0) * 1000
        conf = _confidence(out, m.output)
        with self._lock:
            self.requests += 1
            self._lat.append(ms)
            if conf is not None:
                self._conf.append(conf)
            if self.shadow_rate > 0 and self._rng.random() < self.shadow_rate and m is self._model:
                self._shadow.append((raw, out))
        return out

    def health(self, *, reset: bool = False) -> ModelHealth:
        """Requests, errors, latency and confidence since the last reset."""
        with self._lock:
            lat = np.array(self._lat) if self._lat else None
            h = ModelHealth(
                requests=self.requests,
                errors=self.errors,
                latency_p50_ms=float(np.percentile(lat, 50)) if lat is not None else None,
                latency_p95_ms=float(np.percentile(lat, 95)) if lat is not None else None,
                mean_confidence=float(np.mean(self._conf)) if self._conf else None,
            )
            if reset:
                self._reset_stats()
        return h

    def shadow_samples(self) -> list[tuple[Any, dict[str, np.ndarray]]]:
        with self._lock:
            return list(self._shadow)

    # --- local API -----------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start the local inference API in a background thread; return the port it listens on."""
        import socket

        import uvicorn

        app = create_local_app(self)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        cfg = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="edgefleet-local-api"
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return sock.getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
        with self._lock:
            self._model = None


def _confidence(out: dict[str, np.ndarray], output: str | None) -> float | None:
    arr = out.get(output) if output else None
    if arr is None:
        floats = [np.asarray(v) for v in out.values() if np.asarray(v).dtype.kind == "f" and np.ndim(v) == 2]
        arr = floats[0] if floats else None
    if arr is None or np.ndim(arr) != 2 or not np.size(arr):
        return None
    return float(np.asarray(arr).max(axis=1).mean())


def create_local_app(host: RuntimeHost) -> Any:
    """The agent's local inference API: ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``."""
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    from edgefleet.errors import EdgefleetError

    app = FastAPI(title="edgefleet agent local API", version="1")

    @app.exception_handler(EdgefleetError)
    async def _err(_req: Any, e: EdgefleetError) -> JSONResponse:
        return JSONResponse(e.to_dict(), status_code=e.status_code)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": host.model_key is not None, "model": host.model_key}

    @app.get("/v1/model")
    def model() -> dict[str, Any]:
        return {"model": host.model_key, "health": host.health().model_dump()}

    @app.post("/v1/predict")
    def predict(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        if "inputs" not in body:
            from edgefleet.errors import InputError

            raise InputError("body must be {'inputs': [...]}", hint="send raw inputs as nested lists")
        raw = np.asarray(body["inputs"], dtype=np.float32)
        out = host.predict(raw)
        return {"model": host.model_key, "outputs": {k: np.asarray(v).tolist() for k, v in out.items()}}

    return app
