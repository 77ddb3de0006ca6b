"""What serves the active model inside the agent: hot-swappable inference, live figures, local API."""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.errors import DeadlineExceededError, InputError, NotFoundError, OverloadedError
from edgefleet.protocol import ModelHealth

__all__ = ["RuntimeHost"]

log = logging.getLogger(__name__)


class _Instrumented:
    """The runtime as the local API sees it: every answer (or error) is also counted by the host."""

    def __init__(self, host: RuntimeHost) -> None:
        self._host = host

    def predict(self, raw: Any, **opts: Any) -> Any:
        return self._answer(*self._host._predict(raw, opts))

    async def apredict(self, raw: Any, **opts: Any) -> Any:
        return self._answer(*await self._host._apredict(raw, opts))  # the local API awaits this one

    @staticmethod
    def _answer(res: Any, request_id: str | None) -> Any:
        return res if request_id is None else _Sampled(res, request_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host._ensure_runtime(), name)


class _Sampled:
    """A ``Result`` whose JSON answer also names the sampled request (``request_id``: feedback refers to it)."""

    def __init__(self, res: Any, request_id: str) -> None:
        self._res, self.request_id = res, request_id

    def to_dict(self) -> dict[str, Any]:
        return {**self._res.to_dict(), "request_id": self.request_id}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._res, name)


class RuntimeHost:
    """Serves the active bundle through ``edgefleet.runtime.Runtime``; a swap never drops a request.

    The runtime hot-swaps (requests in flight finish on the old model). Every answer and model error is
    recorded by the loaded bundle's telemetry ``Aggregator``, the one source of the host's figures: the
    telemetry windows it closes, and :meth:`health` (requests, errors, latency, confidence, drift) for
    heartbeats and the watch window. The host also keeps a sample of live requests for a candidate's
    shadow run, and serves the runtime's local API (``edgefleet.runtime.create_app``).

    When :attr:`sampler` (an ``edgefleet.telemetry.Sampler``, set by the agent) is enabled, every answer
    is offered to it with a fresh request id (``<id>`` for one row, ``<id>-<row>`` for more) and the
    sampled input (the bytes the caller sent when it sent encoded bytes, else the model input); a sampled
    answer of the local API carries its ``request_id``. :attr:`on_load` is called with each bundle root
    the host starts serving.

    Args:
        shadow_rate: fraction of live requests kept (input and answer) for a candidate's shadow run.
        shadow_keep: most samples kept.
        recent_windows: closed telemetry windows (besides the open one) whose latency and confidence
            :meth:`health` describes.
        runtime_config: ``edgefleet.runtime.RuntimeConfig`` (default: from ``EDGEFLEET_*`` variables).
        telemetry_config: ``edgefleet.telemetry.AggregatorConfig`` of the per-bundle aggregator that
            builds telemetry windows and drift (default: from ``EDGEFLEET_TELEMETRY_*`` variables).
    """

    def __init__(
        self,
        *,
        shadow_rate: float = 0.1,
        shadow_keep: int = 200,
        recent_windows: int = 10,
        seed: int | None = None,
        runtime_config: Any = None,
        telemetry_config: Any = None,
    ) -> None:
        self.runtime: Any = None
        self.runtime_config = runtime_config
        self.telemetry_config = telemetry_config
        self.aggregator: Any = None  # edgefleet.telemetry.Aggregator of the loaded bundle
        self._pre: Any = None  # the bundle's preprocessing: drift is measured on model inputs
        self._closed_windows: list[Any] = []  # closed windows not yet collected by telemetry_windows()
        self._lock = threading.Lock()
        self.loaded: Path | None = None
        # edgefleet.power.PowerGate set by the agent: the device policy's rate limit and paused escalation
        self.power_gate: Any = None
        self.shadow_rate = shadow_rate
        self._shadow: collections.deque[tuple[Any, dict[str, np.ndarray]]] = collections.deque(
            maxlen=shadow_keep
        )
        self._rng = random.Random(seed)
        # health since the last reset: counts of the closed windows, the recent closed windows themselves
        self._counted = [0, 0]
        self._recent: collections.deque[Any] = collections.deque(maxlen=max(0, recent_windows))
        self._server: Any = None
        self.sampler: Any = None  # edgefleet.telemetry.Sampler, set by the agent (issue 13)
        self.on_load: Any = None  # called with the root of each bundle loaded

    # --- model ---------------------------------------------------------------------------------

    def load(self, bundle: Any) -> None:
        """Load (or hot swap to) a bundle: a verified ``edgefleet.bundle.Bundle`` (served as it is, its
        files not hashed again) or the path of an unpacked bundle (opened and checked by the runtime).

        Raises:
            ModelLoadError, GoldenMismatchError: the model cannot serve; the previous one keeps serving.
        """
        root = Path(getattr(bundle, "root", bundle))
        self._ensure_runtime().swap(bundle)
        agg, pre = self._new_aggregator(root)
        with self._lock:
            self.loaded = root
            self._shadow.clear()  # samples were answered by the old model
            old, self.aggregator, self._pre = self.aggregator, agg, pre
        self._retire(old)
        if self.on_load is not None:
            with contextlib.suppress(Exception):
                self.on_load(root)
        log.info("serving %s", self.model_key, extra={"bundle": str(root)})

    def _new_aggregator(self, bundle_dir: Path) -> tuple[Any, Any]:
        """A telemetry aggregator (and the preprocessing) for the bundle now served; (None, None) on error."""
        try:
            from edgefleet.bundle import REFERENCE_FILE, Preprocess
            from edgefleet.telemetry import Aggregator

            man = self.runtime.manifest
            tags = {"model": man.name, "version": man.version, "variant": man.variant}
            ref = bundle_dir / REFERENCE_FILE
            try:
                agg = Aggregator(
                    None,
                    reference=str(ref) if ref.is_file() else None,
                    config=self.telemetry_config,
                    tags=tags,
                )
            except Exception as e:  # noqa: BLE001 - no drift, but health figures still count
                log.warning("drift disabled for %s: %s", bundle_dir, e)
                agg = Aggregator(None, config=self.telemetry_config, tags=tags)
            return agg, Preprocess(man.preprocess)
        except Exception as e:  # noqa: BLE001 - telemetry must never stop a model from serving
            log.warning("telemetry disabled for %s: %s", bundle_dir, e)
            return None, None

    def _retire(self, agg: Any) -> None:
        """Close the old bundle's open window; its windows wait for :meth:`telemetry_windows`."""
        if agg is None:
            return
        try:
            agg.flush_window()
        except Exception as e:  # noqa: BLE001
            log.warning("telemetry window of the previous model lost: %s", e)
            return
        self._take(agg)

    def _take(self, agg: Any) -> None:
        """Move the windows ``agg`` closed into the host: counted for :meth:`health`, kept for telemetry."""
        try:
            done = agg.drain_windows()
        except Exception as e:  # noqa: BLE001
            log.warning("telemetry windows lost: %s", e)
            return
        with self._lock:
            for w in done:
                self._counted[0] += w.requests
                self._counted[1] += w.errors
                self._recent.append(w)
            self._closed_windows.extend(done)
            del self._closed_windows[:-1000]  # bounded if nobody collects

    def telemetry_windows(self, *, final: bool = False) -> list[Any]:
        """Close the current window if its time is up (or now, if ``final``); return closed windows.

        Returns ``edgefleet.telemetry.Window`` objects, oldest first; each is returned once.
        """
        agg = self.aggregator
        if agg is not None:
            with contextlib.suppress(Exception):
                agg.flush_window() if final else agg.tick()
            self._take(agg)
        with self._lock:
            out, self._closed_windows = self._closed_windows, []
        return out

    def _ensure_runtime(self) -> Any:
        if self.runtime is None:
            from edgefleet.runtime import Runtime

            self.runtime = Runtime(self.runtime_config)
        return self.runtime

    @property
    def model_key(self) -> str | None:
        rt = self.runtime
        if rt is None:
            return None
        try:
            return rt.manifest.key
        except Exception:  # noqa: BLE001 - closed or not serving
            return None

    def predict(self, raw: Any) -> dict[str, np.ndarray]:
        """Run the active model on raw inputs (the bundle's contract applies); return its outputs."""
        return self.predict_result(raw).outputs

    def predict_result(self, raw: Any, **opts: Any) -> Any:
        """Like :meth:`predict` but return the runtime's full ``Result``."""
        return self._predict(raw, opts)[0]

    async def apredict_result(self, raw: Any, **opts: Any) -> Any:
        """:meth:`predict_result` for asyncio callers (the runtime's ``apredict``), counted the same way."""
        return (await self._apredict(raw, opts))[0]

    def _predict(self, raw: Any, opts: dict[str, Any]) -> tuple[Any, str | None]:
        """The answer and the request id it was sampled under (None: not sampled)."""
        rt, loaded = self._serving(opts)
        t0 = time.perf_counter()
        try:
            res = rt.predict(raw, **opts)
        except (InputError, OverloadedError, DeadlineExceededError):
            raise  # the caller's fault or back-pressure: not the model's health
        except Exception:
            self._count_error()
            raise
        return res, self._count(raw, res, t0, loaded)

    async def _apredict(self, raw: Any, opts: dict[str, Any]) -> tuple[Any, str | None]:
        rt, loaded = self._serving(opts)
        t0 = time.perf_counter()
        try:
            res = await rt.apredict(raw, **opts)
        except (InputError, OverloadedError, DeadlineExceededError):
            raise
        except Exception:
            self._count_error()
            raise
        return res, self._count(raw, res, t0, loaded)

    def _serving(self, opts: dict[str, Any]) -> tuple[Any, Path]:
        rt = self.runtime
        loaded = self.loaded
        if rt is None or loaded is None:  # the local API starts before the first model: not a model error
            raise NotFoundError("no model is active on this device yet", hint="wait for the first assignment")
        gate = self.power_gate
        if gate is not None:
            gate.admit()  # RateLimitedError while the device's power policy limits the rate
            if gate.pause_escalation:
                opts["escalate"] = False
        return rt, loaded

    def _count_error(self) -> None:
        agg = self.aggregator
        if agg is not None:
            agg.record(None, None, error="model_error")

    def _count(self, raw: Any, res: Any, t0: float, loaded: Path) -> str | None:
        """Record one answer (health, telemetry, shadow set, sampler); the request id if it was sampled."""
        if res.triggered is False:  # the runtime's trigger answered: the model did not run, nothing to record
            return None
        ms = (time.perf_counter() - t0) * 1000
        with self._lock:
            if self.shadow_rate > 0 and self._rng.random() < self.shadow_rate and loaded == self.loaded:
                self._shadow.append((raw, res.outputs))
            agg, pre = (self.aggregator, self._pre) if loaded == self.loaded else (None, None)
        x = _model_inputs(raw, pre) if agg is not None else None
        if agg is not None:
            agg.record(x, res.outputs, latency_ms=ms)
        sampler = self.sampler
        if sampler is None or not sampler.config.enabled or res.confidence is None:
            return None
        return _offer(sampler, raw, x, res)

    def health(self, *, reset: bool = False) -> ModelHealth:
        """Figures of the telemetry aggregators since the last reset, as a heartbeat's ``ModelHealth``.

        ``requests``/``errors`` count every request since the reset; latency and confidence describe the
        open window and the ``recent_windows`` closed before it; ``drift_score`` is the drift of the last
        window that carried features. ``reset`` closes the open window and starts the counts again.
        """
        agg = self.aggregator
        open_window = None
        if agg is not None:
            with contextlib.suppress(Exception):
                # close the open window (reset), or one that is due now so that it is not counted twice
                agg.flush_window() if reset else agg.tick()
            self._take(agg)
            if not reset:
                with contextlib.suppress(Exception):
                    open_window = agg.snapshot()
        with self._lock:
            windows = [*self._recent, *([open_window] if open_window is not None else [])]
            requests, errors = self._counted
            if reset:
                self._counted = [0, 0]
                self._recent.clear()
        h = ModelHealth()
        if windows:
            from edgefleet.telemetry import merge_windows

            with contextlib.suppress(Exception):
                h = merge_windows(windows, on_mismatch="drop").health()
        h.requests = requests + (open_window.requests if open_window is not None else 0)
        h.errors = errors + (open_window.errors if open_window is not None else 0)
        h.drift_score = agg.last_drift.score if agg is not None and agg.last_drift is not None else None
        return h

    def shadow_samples(self) -> list[tuple[Any, dict[str, np.ndarray]]]:
        with self._lock:
            return list(self._shadow)

    # --- local API -----------------------------------------------------------------------------

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        insecure_http: bool = False,
    ) -> int:
        """Start the runtime's local API in a background thread; return the port it listens on.

        Off loopback it refuses to listen in clear text unless ``insecure_http`` (``ApiServer``'s policy).
        """
        from edgefleet.runtime import ApiServer

        cfg = self._ensure_runtime().config.api.model_copy(
            update={
                "host": host,
                "port": port,
                "uds": None,
                "tls_cert": tls_cert,
                "tls_key": tls_key,
                "insecure_http": insecure_http,
            }
        )
        self._server = ApiServer(_Instrumented(self), cfg).start()  # type: ignore[arg-type]
        return self._server.port

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        rt, self.runtime = self.runtime, None
        if rt is not None:
            rt.close()


def _model_inputs(raw: Any, pre: Any) -> Any:
    """What the model saw (the reference describes model inputs): the contract re-applied to ``raw``.

    Model-input dicts pass through; anything the contract cannot redo cheaply gives None (no features).
    """
    if pre is None or isinstance(raw, dict) and not len(pre):
        return raw if isinstance(raw, dict) else None
    if isinstance(raw, dict):  # raw inputs by name: the contract takes the (only) first input
        raw = next(iter(raw.values()), None)
    try:
        return pre.apply(raw) if len(pre) else np.asarray(raw)
    except Exception:  # noqa: BLE001 - the runtime accepted it; telemetry just skips its features
        return None


def _numeric(raw: Any) -> np.ndarray | None:
    """``raw`` as a numeric array with a batch axis (JSON rows arrive as lists), else None."""
    if isinstance(raw, dict):
        return None
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError):
        return None
    return arr if arr.ndim >= 1 and arr.dtype.kind in "biuf" else None


def _offer(sampler: Any, raw: Any, x: Any, res: Any) -> str | None:
    """Offer one answer's rows to the sampler; the request id when it kept any."""
    conf = np.asarray(res.confidence).reshape(-1)
    n = len(conf)
    rid = uuid.uuid4().hex
    ids = [rid] if n == 1 else [f"{rid}-{i}" for i in range(n)]
    encoded = (
        raw if isinstance(raw, list) and len(raw) == n and all(isinstance(b, bytes) for b in raw) else None
    )
    labels = res.labels
    if labels is None and res.classes is not None:
        labels = [str(c) for c in res.classes]
    scores = next((v for v in res.outputs.values() if getattr(v, "ndim", 0) == 2 and len(v) == n), None)
    inputs = None
    if encoded is None:  # the input as the caller sent it (what a reviewer looks at and retraining feeds
        # through the contract of the next release); the model input where the raw one is not an array
        arr = _numeric(raw)
        inputs = (
            arr
            if arr is not None and len(arr) == n
            else x
            if isinstance(x, np.ndarray) and len(x) == n
            else None
        )
    tags = {"model": res.model, "version": res.version, "variant": res.variant}
    try:
        kept = sampler.offer(
            confidence=conf,
            scores=scores,
            labels=labels,
            inputs=inputs,
            raw=encoded,
            request_ids=ids,
            tags=tags,
        )
    except Exception as e:  # noqa: BLE001 - sampling never fails a request
        log.warning("sampling failed: %s", e)
        return None
    return rid if kept else None
