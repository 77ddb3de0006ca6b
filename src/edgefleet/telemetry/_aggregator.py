"""``Aggregator``: a predictor wrapper that turns every request into window aggregates.

The hot path only counts and appends to small buffers (a few microseconds); binning features, computing
confidences and feeding sketches happen in bulk every ``flush_rows`` rows and when a window closes. Windows
close on time (``window_s``), on :meth:`Aggregator.tick` (call it from the agent loop so idle windows close
too) and on :meth:`Aggregator.close`; each closed window goes to the sink (usually the outbox).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.errors import EdgefleetError, TelemetryError
from edgefleet.telemetry._reference import Reference
from edgefleet.telemetry._sketch import add_many
from edgefleet.telemetry._window import RESOURCE_NAMES, Window, WindowConfig, merge_windows

if TYPE_CHECKING:
    from edgefleet.telemetry._drift import DriftConfig
    from edgefleet.telemetry._outbox import Outbox
    from edgefleet.telemetry._sampler import Sampler

__all__ = ["Aggregator", "AggregatorConfig", "ResourceProbe"]

log = logging.getLogger(__name__)

_SCORE_NAMES = ("probabilities", "probs", "scores", "logits", "output_probability")
_OTHER = "__other__"


class AggregatorConfig(BaseSettings):
    """What the aggregator records and how often (``EDGEFLEET_TELEMETRY_*``)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_TELEMETRY_", extra="ignore")

    window_s: float = Field(60.0, gt=0, description="length of one window, seconds")
    feature_window_s: float = Field(
        600.0,
        ge=0,
        description="feature histograms accumulate this long and ride on the window that closes then (bytes)",
    )
    flush_rows: int = Field(256, ge=1, description="rows buffered before binning them in bulk")
    max_buffer_bytes: int = Field(1 << 20, ge=1024, description="input bytes buffered before binning")
    max_pending_windows: int = Field(
        120, ge=1, description="closed windows kept for pull when there is no sink"
    )
    max_classes: int = Field(256, ge=1, description="distinct predicted classes per window (rest: __other__)")
    input_name: str | None = Field(None, description="input whose features are summarised (default: first)")
    scores_output: str | None = Field(
        None, description="output with class scores (default: probabilities/...)"
    )
    label_output: str | None = Field(None, description="output with labels when there are no scores")
    softmax: bool | None = Field(
        None, description="apply softmax to scores; None: detect from the first batch"
    )
    resources: bool = Field(True, description="read CPU, RSS, temperature, battery when a window closes")
    drift_on_close: bool = Field(True, description="test each closed window against the reference")
    emit_empty: bool = Field(False, description="also emit windows without any request")


class ResourceProbe:
    """CPU, RSS (psutil), temperature and battery (psutil sensors where the platform has them, else None).

    Args:
        sensors: optional callable returning ``{"temperature_c": ..., "battery_percent": ...}``; used by
            tests and platforms whose sensors psutil cannot see.
    """

    def __init__(self, sensors: Callable[[], Mapping[str, float | None]] | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # prime: the next call reports usage since now
        self._sensors = sensors

    def _temperature(self) -> float | None:
        fn = getattr(self._psutil, "sensors_temperatures", None)
        if fn is None:
            return None
        try:
            temps = fn()
        except (OSError, RuntimeError):
            return None
        values = [t.current for entries in temps.values() for t in entries if t.current is not None]
        return float(max(values)) if values else None

    def _battery(self) -> float | None:
        fn = getattr(self._psutil, "sensors_battery", None)
        try:
            b = fn() if fn else None
        except (OSError, RuntimeError):
            return None
        return None if b is None else float(b.percent)

    def read(self) -> dict[str, float | None]:
        """One reading: ``cpu_percent`` of this process since the last reading, ``rss_mb``, sensors."""
        out: dict[str, float | None] = {
            "cpu_percent": float(self._proc.cpu_percent(None)),
            "rss_mb": self._proc.memory_info().rss / 2**20,
            "temperature_c": None,
            "battery_percent": None,
        }
        if self._sensors is not None:
            s = self._sensors()
            out["temperature_c"] = s.get("temperature_c")
            out["battery_percent"] = s.get("battery_percent")
        else:
            out["temperature_c"] = self._temperature()
            out["battery_percent"] = self._battery()
        return out

    def resources(self, disk_path: str | None = None):
        """A ``protocol.Resources`` for heartbeats."""
        from edgefleet.protocol import Resources

        r = self.read()
        disk = None
        if disk_path:
            import shutil

            disk = shutil.disk_usage(disk_path).free / 2**20
        return Resources(disk_free_mb=disk, **r)


class Aggregator:
    """Wrap a predictor (and be one), or call :meth:`record` from outside the predict call.

    Args:
        predictor: the wrapped predictor, or None for record-only use.
        reference: the bundle's reference statistics (dict, path or ``Reference``): enables feature
            histograms, class labels and drift on close.
        config, window_config, drift_config: settings (defaults from the environment).
        tags: copied into every window (device_id, device_class, region, model, version ...).
        sink: called with each closed window (outside the lock).
        outbox: shortcut for a sink that queues ``window.to_dict()`` as kind ``telemetry``.
        sampler: optional ``Sampler`` offered every row at flush time.
        probe: resource probe (default: a psutil ``ResourceProbe`` when ``config.resources``).
    """

    def __init__(
        self,
        predictor: Any | None = None,
        *,
        reference: Reference | Mapping[str, Any] | str | None = None,
        config: AggregatorConfig | None = None,
        window_config: WindowConfig | None = None,
        drift_config: DriftConfig | None = None,
        tags: Mapping[str, str] | None = None,
        sink: Callable[[Window], Any] | None = None,
        outbox: Outbox | None = None,
        sampler: Sampler | None = None,
        probe: ResourceProbe | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.predictor = predictor
        self.config = config or AggregatorConfig()
        self.window_config = window_config or WindowConfig()
        self._drift_config = drift_config
        if isinstance(reference, str):
            reference = Reference.load(reference)
        self.reference: Reference | None = Reference.from_dict(reference) if reference is not None else None
        self.tags = dict(tags or {})
        if outbox is not None and sink is not None:
            raise TelemetryError("give the Aggregator a sink or an outbox, not both")
        if outbox is not None:
            sink = _OutboxSink(outbox)
        self.sink = sink
        self.sampler = sampler
        self.probe = probe if probe is not None else (ResourceProbe() if self.config.resources else None)
        self._mono, self._wall = monotonic, wall
        self._lock = threading.Lock()
        self.completed: deque[Window] = deque(maxlen=self.config.max_pending_windows)
        self._since_health: list[Window] = []
        self.last_drift = None
        self._softmax = self.config.softmax
        self._names_checked = False
        self._features_ok = self.reference is not None and len(self.reference.names) > 0
        if self._features_ok:
            from edgefleet.bundle import summarize_features  # import now, not in the first request

            self._summarize = summarize_features
        self._labels = (
            list(self.reference.class_labels) if self.reference and self.reference.class_labels else None
        )
        self._primary_tier: str | None = None
        meta = getattr(predictor, "metadata", None)
        if meta is not None:
            self._primary_tier = getattr(meta, "tier", None)
        self._warned: set[str] = set()
        self._open()
        self._reset_features()

    # --- predictor protocol -------------------------------------------------------------------------

    @property
    def metadata(self) -> Any:
        if self.predictor is None:
            raise TelemetryError(
                "this Aggregator wraps no predictor", hint="use record() instead of predict()"
            )
        return self.predictor.metadata

    def predict(self, batch: dict[str, np.ndarray], **opts: Any) -> dict[str, np.ndarray]:
        """Run the wrapped predictor and record latency, outputs, confidence or the error."""
        if self.predictor is None:
            raise TelemetryError(
                "this Aggregator wraps no predictor", hint="use record() instead of predict()"
            )
        t0 = time.perf_counter()
        try:
            out = self.predictor.predict(batch, **opts)
        except Exception as e:
            self.record(batch, None, latency_ms=(time.perf_counter() - t0) * 1e3, error=e)
            raise
        self.record(batch, out, latency_ms=(time.perf_counter() - t0) * 1e3)
        return out

    def close(self) -> None:
        """Close the current window (emitting it) and the wrapped predictor."""
        self.flush_window()
        if self.predictor is not None:
            self.predictor.close()

    # --- recording ----------------------------------------------------------------------------------

    def _open(self) -> None:
        self._w = Window.empty(self._wall(), tags=self.tags, config=self.window_config)
        self._t0 = self._mono()
        self._lat: list[float] = []
        self._scores: list[np.ndarray] = []
        self._labels_buf: list[np.ndarray] = []
        self._inputs: list[np.ndarray] = []
        self._tiers: list[tuple[str, ...] | None] = []
        self._buf_rows = 0
        self._buf_bytes = 0

    def _reset_features(self) -> None:
        self._fc: np.ndarray | None = None
        self._frows = self._fnonfinite = 0
        # features start with the window that is open now (reset happens right after _open)
        self._fstart, self._ft0 = self._w.start, self._t0

    def _attach_features(self, w: Window) -> None:
        if self._fc is None:
            return
        w.feature_counts, w.reference_id = self._fc, self.reference.id
        w.feature_rows, w.feature_nonfinite, w.feature_start = self._frows, self._fnonfinite, self._fstart

    def record(
        self,
        inputs: Mapping[str, np.ndarray] | np.ndarray | None,
        outputs: Mapping[str, np.ndarray] | None,
        *,
        latency_ms: float | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        """Record one request observed elsewhere (same bookkeeping as :meth:`predict`).

        Args:
            inputs: the batch (dict of arrays, or the one input array), or None.
            outputs: the outputs (a runtime ``Prediction`` also contributes tiers and events), or None.
            latency_ms: request latency; recorded for successful requests only.
            error: the exception (or an error code) when the request failed.
        """
        closed = None
        try:
            with self._lock:
                if self._mono() - self._t0 >= self.config.window_s:
                    closed = self._close_locked()
                self._record_locked(inputs, outputs, latency_ms, error)
        except Exception as e:  # noqa: BLE001 - telemetry must never break inference
            self._w.telemetry_errors += 1
            self._warn_once(f"record:{type(e).__name__}", "telemetry record failed: %s", e)
        if closed is not None:
            self._emit(closed)

    def _record_locked(self, inputs, outputs, latency_ms, error) -> None:
        w = self._w
        w.requests += 1
        if error is not None:
            w.errors += 1
            code = error if isinstance(error, str) else getattr(error, "code", None) or type(error).__name__
            code = "".join(ch if ch.isprintable() else "_" for ch in str(code))[:128] or "error"
            if code not in w.error_codes and len(w.error_codes) >= 48:
                code = "other"  # windows accept at most 64 keys (WindowConfig.max_keys)
            w.error_codes[code] = w.error_codes.get(code, 0) + 1
            return
        if latency_ms is not None:
            self._lat.append(latency_ms)
        if outputs is None:
            return
        scores = self._pick_scores(outputs)
        rows = 0
        if scores is not None:
            rows = len(scores)
            self._scores.append(np.array(scores, dtype=np.float64, copy=True).reshape(rows, -1))
        else:
            lab = self._pick_labels(outputs)
            if lab is not None:
                rows = len(lab)
                self._labels_buf.append(np.array(lab, copy=True).reshape(rows))
        w.rows += rows
        tiers = getattr(outputs, "tiers", None)
        events = getattr(outputs, "events", None)
        if events:
            for ev in events:
                _bump(w.events, str(ev.kind), max(int(getattr(ev, "rows", 0) or 0), 1))
        if tiers:
            if len(tiers) == 1 or all(t == tiers[0] for t in tiers):
                _bump(w.tiers, str(tiers[0]), len(tiers))
            else:
                for t in tiers:
                    _bump(w.tiers, str(t), 1)
        if rows and (self._features_ok or self.sampler is not None):
            x = self._pick_input(inputs) if inputs is not None else None
            if x is not None and x.ndim >= 1 and len(x) == rows:
                x = np.array(x, copy=True)
                self._inputs.append(x)
                self._buf_bytes += x.nbytes
            else:
                self._inputs.append(None)  # keeps rows aligned with scores
        if self.sampler is not None:
            self._tiers.append(tuple(tiers) if tiers else None)
        self._buf_rows += rows
        if self._buf_rows >= self.config.flush_rows or self._buf_bytes >= self.config.max_buffer_bytes:
            self._flush_locked()

    def _pick_scores(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
        name = self.config.scores_output
        if name is not None:
            return outputs.get(name)
        for n in _SCORE_NAMES:
            if n in outputs:
                return outputs[n]
        for v in outputs.values():
            if getattr(v, "ndim", 0) == 2 and v.dtype.kind == "f":
                return v
        return None

    def _pick_labels(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
        name = self.config.label_output or "label"
        v = outputs.get(name)
        return v if v is not None and getattr(v, "ndim", 0) >= 1 else None

    def _pick_input(self, inputs) -> np.ndarray | None:
        if isinstance(inputs, np.ndarray):
            return inputs
        if self.config.input_name is not None:
            v = inputs.get(self.config.input_name)
            return None if v is None else np.asarray(v)
        for v in inputs.values():
            return np.asarray(v)
        return None

    def _flush_locked(self) -> None:
        """Bin everything buffered into the current window."""
        w = self._w
        lat, self._lat = self._lat, []
        if lat:
            add_many(w.latency_ms, np.maximum(np.asarray(lat, dtype=np.float64), 0.0))
        scores, self._scores = self._scores, []
        inputs, self._inputs = self._inputs, []
        tiers, self._tiers = self._tiers, []
        labels_buf, self._labels_buf = self._labels_buf, []
        self._buf_rows = self._buf_bytes = 0
        conf = cls = None
        if scores:
            conf, cls = self._confidence(scores)
            add_many(w.confidence, conf)
            w.confidence_hist += Reference.confidence_bins(conf)
            self._count_classes(np.bincount(cls), index=True)
        for lab in labels_buf:
            vals, counts = np.unique(lab.astype(str), return_counts=True)
            self._count_named(dict(zip(vals.tolist(), counts.tolist(), strict=True)))
        feats = None
        if self._features_ok and inputs and any(x is not None for x in inputs):
            feats = self._bin_features(inputs, [len(s) for s in scores] if scores else None)
        if self.sampler is not None and scores:
            self._offer_samples(inputs, scores, conf, cls, tiers, feats)

    def _confidence(self, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        s = np.concatenate(scores) if len(scores) > 1 else scores[0]
        if s.shape[1] == 1:  # one sigmoid output: confidence of the predicted side
            p = np.clip(s[:, 0], 0.0, 1.0)
            return np.maximum(p, 1 - p), (p >= 0.5).astype(np.int64)
        if self._softmax is None:
            self._softmax = not (
                (s >= 0).all() and (s <= 1).all() and np.allclose(s.sum(axis=1), 1.0, atol=1e-3)
            )
        if self._softmax:
            e = np.exp(s - s.max(axis=1, keepdims=True))
            s = e / e.sum(axis=1, keepdims=True)
        return s.max(axis=1), s.argmax(axis=1)

    def _count_classes(self, counts: np.ndarray, *, index: bool) -> None:
        named = {}
        labels = self._labels
        for i in np.flatnonzero(counts).tolist():
            name = labels[i] if labels is not None and i < len(labels) else str(i)
            named[name] = int(counts[i])
        self._count_named(named)

    def _count_named(self, named: Mapping[str, int]) -> None:
        c = self._w.classes
        for k, v in named.items():
            k = "".join(ch if ch.isprintable() else "_" for ch in k)[:128] or "_"
            if k not in c and len(c) >= self.config.max_classes:
                k = _OTHER
            c[k] = c.get(k, 0) + v

    def _bin_features(self, inputs: list, score_rows: list[int] | None) -> np.ndarray | None:
        ref = self.reference
        assert ref is not None
        xs = [x for x in inputs if x is not None]
        try:
            x = np.concatenate(xs) if len(xs) > 1 else xs[0]
            names, f = self._summarize(x)
        except Exception as e:  # noqa: BLE001 - a bad input shape must not stop the window
            self._w.telemetry_errors += 1
            self._warn_once("features", "feature summary failed: %s", e)
            return None
        if not self._names_checked:
            self._names_checked = True
            if tuple(names) != ref.names:
                self._features_ok = False
                self._warn_once(
                    "names",
                    "input features %s... do not match the reference's %s...; feature histograms disabled",
                    names[:3],
                    list(ref.names[:3]),
                )
                return None
        finite = np.isfinite(f).all(axis=1)
        if self._fc is None:
            self._fc = np.zeros((len(ref.names), ref.width), dtype=np.int64)
        good = f if finite.all() else f[finite]
        self._fc += ref.bin_matrix(good)
        self._frows += len(good)
        self._fnonfinite += int((~finite).sum())
        # features aligned with score rows only when every request carried its input
        if all(x is not None for x in inputs):
            return f
        return None

    def _offer_samples(self, inputs, scores, conf, cls, tiers, feats) -> None:
        try:
            n = len(conf)
            esc = np.zeros(n, dtype=bool)
            if self._primary_tier is not None and tiers and any(t is not None for t in tiers):
                i = 0
                for s, t in zip(scores, tiers, strict=False):
                    if t is not None:
                        esc[i : i + len(s)] = [x != self._primary_tier for x in t[: len(s)]]
                    i += len(s)
            xs = inputs if inputs and all(x is not None for x in inputs) else None
            x = (np.concatenate(xs) if len(xs) > 1 else xs[0]) if xs else None
            s = np.concatenate(scores) if len(scores) > 1 else scores[0]
            labels = [
                self._labels[i] if self._labels and i < len(self._labels) else str(i) for i in cls.tolist()
            ]
            self.sampler.offer(
                inputs=x,
                scores=s,
                confidence=conf,
                labels=labels,
                escalated=esc,
                features=feats,
                tags=self.tags,
            )
        except EdgefleetError as e:
            self._w.telemetry_errors += 1
            self._warn_once(f"sampler:{e.code}", "sampler failed: %s", e)

    # --- windows ------------------------------------------------------------------------------------

    def _close_locked(self, *, final: bool = False) -> Window | None:
        self._flush_locked()
        w = self._w
        now = self._mono()
        w.end = w.start + max(0.0, now - self._t0)
        self._open()
        if final or now - self._ft0 >= self.config.feature_window_s - 1e-6:
            self._attach_features(w)
            self._reset_features()
        if w.requests == 0 and not self.config.emit_empty and w.feature_counts is None:
            return None
        if self.probe is not None:
            try:
                for k, v in self.probe.read().items():
                    if v is not None and k in RESOURCE_NAMES:
                        w.resources[k] = [1.0, float(v), float(v), float(v), float(v)]
            except Exception as e:  # noqa: BLE001
                w.telemetry_errors += 1
                self._warn_once("probe", "resource probe failed: %s", e)
        return w

    def _emit(self, w: Window) -> None:
        # Drift is tested when the window carries feature histograms (or the reference has no features).
        testable = w.feature_counts is not None or not self._features_ok
        if self.reference is not None and self.config.drift_on_close and testable:
            from edgefleet.telemetry._drift import drift

            try:
                rep = drift(w, self.reference, self._drift_config)
                w.drift_score = rep.score
                self.last_drift = rep
            except EdgefleetError as e:
                w.telemetry_errors += 1
                self._warn_once("drift", "drift test failed: %s", e)
        with self._lock:
            self.completed.append(w)
            self._since_health.append(w)
            del self._since_health[: -self.config.max_pending_windows]
        if self.sink is not None:
            try:
                self.sink(w)
            except Exception as e:  # noqa: BLE001 - the window stays in .completed
                self._warn_once(f"sink:{type(e).__name__}", "telemetry sink failed: %s", e)

    def tick(self) -> Window | None:
        """Close the current window if its time is up (call from a timer); return it if one closed."""
        with self._lock:
            closed = self._close_locked() if self._mono() - self._t0 >= self.config.window_s else None
        if closed is not None:
            self._emit(closed)
        return closed

    def flush_window(self) -> Window | None:
        """Close the current window now (e.g. at shutdown) and emit it; return it."""
        with self._lock:
            closed = self._close_locked(final=True)
        if closed is not None:
            self._emit(closed)
        return closed

    def snapshot(self) -> Window:
        """A copy of the current, still open window (buffers binned first)."""
        with self._lock:
            self._flush_locked()
            w = self._w.copy()
            w.end = w.start + max(0.0, self._mono() - self._t0)
            if self._fc is not None:
                self._attach_features(w)
                w.feature_counts = self._fc.copy()
            return w

    def health(self):
        """``protocol.ModelHealth`` over the windows closed since the last call plus the open window.

        The open window is included every time, so two calls within one window overlap: the figures are
        "the recent past" (rates and quantiles), not disjoint counts.
        """
        snap = self.snapshot()
        with self._lock:
            done, self._since_health = self._since_health, []
        merged = merge_windows([*done, snap], on_mismatch="drop")
        h = merged.health()
        if self.last_drift is not None:
            h.drift_score = self.last_drift.score
        return h

    def drain_windows(self) -> list[Window]:
        """Closed windows held in memory (when there is no sink), oldest first; they are removed."""
        with self._lock:
            out = list(self.completed)
            self.completed.clear()
            return out

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)


def _bump(counter: dict[str, int], key: str, n: int) -> None:
    if key not in counter and len(counter) >= 48:
        key = "other"  # windows accept at most 64 keys per counter (WindowConfig.max_keys)
    counter[key] = counter.get(key, 0) + n


class _OutboxSink:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def __call__(self, w: Window) -> Any:
        return self.outbox.put("telemetry", w.to_dict())
