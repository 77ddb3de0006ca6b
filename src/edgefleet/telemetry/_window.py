"""``Window``: what a device saw during one aggregation window, in a form that merges exactly.

Counts add, DDSketch bins add, and feature histograms add because every window bins against the same
reference edges (named by ``reference_id``). So the server can merge windows per device, device class,
region, release or fleet in any order and get the same answer as if one device had seen it all.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.errors import PayloadTooLargeError, SchemaVersionError, TelemetryError, ValidationError
from edgefleet.telemetry._sketch import empty_like, new_sketch, quantile, sketch_from_dict, sketch_to_dict

__all__ = ["WINDOW_SCHEMA_VERSION", "RESOURCE_NAMES", "Window", "WindowConfig", "merge_windows"]

WINDOW_SCHEMA_VERSION = 1
RESOURCE_NAMES = ("cpu_percent", "rss_mb", "temperature_c", "battery_percent")
_MAX_INT = 1 << 53
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,128}$")
_REF_RE = re.compile(r"^[0-9a-f]{16}$")
_TOP_KEYS = {
    "v",
    "start",
    "end",
    "windows",
    "tags",
    "requests",
    "rows",
    "errors",
    "error_codes",
    "classes",
    "latency_ms",
    "confidence",
    "confidence_hist",
    "features",
    "events",
    "tiers",
    "resources",
    "telemetry_errors",
    "drift_score",
}


class WindowConfig(BaseSettings):
    """Sketch parameters and the limits a window must respect (``EDGEFLEET_WINDOW_*``).

    Device and server must agree on ``relative_accuracy`` for sketches to merge.
    """

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_WINDOW_", extra="ignore")

    relative_accuracy: float = Field(0.02, gt=0, lt=1, description="DDSketch relative accuracy (2%)")
    sketch_bin_limit: int = Field(512, ge=16, le=4096, description="most bins per DDSketch store")
    max_bytes: int = Field(256 * 1024, ge=1024, description="largest serialized window accepted")
    max_classes: int = Field(1024, ge=1, description="distinct predicted classes per window")
    max_features: int = Field(4096, ge=0, description="feature histograms per window")
    max_feature_width: int = Field(258, ge=3, description="counts per feature histogram (bins + 2)")
    max_keys: int = Field(64, ge=1, description="entries in error_codes, events, tiers and tags")
    max_future_s: float = Field(300.0, ge=0, description="how far a window may end after the server's now")
    max_age_s: float = Field(14 * 86_400.0, gt=0, description="how far a window may end before now")
    max_span_s: float = Field(366 * 86_400.0, gt=0, description="longest window (merged windows included)")


def _bad(msg: str, **details: Any) -> ValidationError:
    return ValidationError(
        f"telemetry window: {msg}",
        hint="the device sent a malformed window; upgrade or reset its telemetry (nothing was stored)",
        **details,
    )


def _int(v: Any, where: str, hi: int = _MAX_INT) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise _bad(f"{where} must be an integer in [0, {hi}], got {v!r}")
    return v


def _float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(f"{where} must be a finite number, got {v!r}")
    return float(v)


def _counter(v: Any, where: str, max_keys: int) -> dict[str, int]:
    if not isinstance(v, dict) or len(v) > max_keys:
        raise _bad(f"{where} must be an object with at most {max_keys} entries")
    out = {}
    for k, c in v.items():
        if not 1 <= len(k) <= 128 or not k.isprintable():
            raise _bad(f"{where} has an invalid key {k[:40]!r}")
        out[k] = _int(c, f"{where}[{k!r}]")
    return out


def _add(a: dict[str, int], b: Mapping[str, int]) -> None:
    for k, v in b.items():
        a[k] = a.get(k, 0) + v


@dataclass
class Window:
    """Aggregates of one time window (see module docstring). Build with ``Window.empty`` or an Aggregator."""

    start: float
    end: float
    latency_ms: Any
    confidence: Any
    tags: dict[str, str] = field(default_factory=dict)
    windows: int = 1
    requests: int = 0
    rows: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    confidence_hist: np.ndarray = field(default_factory=lambda: np.zeros(20, dtype=np.int64))
    reference_id: str | None = None
    feature_rows: int = 0
    feature_nonfinite: int = 0
    feature_counts: np.ndarray | None = None  # (features, width) counts: under, bins..., over
    feature_start: float | None = None  # features may cover a longer span than the window (feature_window_s)
    events: dict[str, int] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    resources: dict[str, list[float]] = field(default_factory=dict)  # name -> [n, sum, min, max, last]
    telemetry_errors: int = 0
    drift_score: float | None = None

    @classmethod
    def empty(
        cls,
        start: float | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        config: WindowConfig | None = None,
    ) -> Window:
        cfg = config or WindowConfig()
        t = time.time() if start is None else start
        return cls(
            start=t,
            end=t,
            latency_ms=new_sketch(cfg.relative_accuracy, cfg.sketch_bin_limit),
            confidence=new_sketch(cfg.relative_accuracy, cfg.sketch_bin_limit),
            tags=dict(tags or {}),
        )

    # --- summaries ----------------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence.sum / self.confidence.count if self.confidence.count else None

    def latency_quantile(self, q: float) -> float | None:
        return quantile(self.latency_ms, q)

    def confidence_quantile(self, q: float) -> float | None:
        return quantile(self.confidence, q)

    def health(self):
        """A ``protocol.ModelHealth`` for heartbeats (golden/shadow fields are the agent's to fill)."""
        from edgefleet.protocol import ModelHealth

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return ModelHealth(
            requests=self.requests,
            errors=self.errors,
            latency_p50_ms=r(self.latency_quantile(0.5)),
            latency_p95_ms=r(self.latency_quantile(0.95)),
            mean_confidence=r(self.mean_confidence),
            drift_score=self.drift_score,
        )

    def summary(self) -> dict[str, Any]:
        """Flat figures for dashboards and Prometheus."""
        res = {k: (v[1] / v[0] if v[0] else None) for k, v in self.resources.items()}
        return {
            "start": self.start,
            "end": self.end,
            "windows": self.windows,
            "requests": self.requests,
            "rows": self.rows,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "latency_p50_ms": self.latency_quantile(0.5),
            "latency_p95_ms": self.latency_quantile(0.95),
            "latency_p99_ms": self.latency_quantile(0.99),
            "mean_confidence": self.mean_confidence,
            "confidence_p05": self.confidence_quantile(0.05),
            "classes": dict(self.classes),
            "events": dict(self.events),
            "resources_mean": res,
            "drift_score": self.drift_score,
        }

    # --- merge --------------------------------------------------------------------------------------

    def copy(self) -> Window:
        return merge_windows([self])

    def merge(self, other: Window, *, on_mismatch: Literal["raise", "drop"] = "raise") -> Window:
        """Add ``other`` into this window (in place) and return self."""
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)
        self.tags = {k: v for k, v in self.tags.items() if other.tags.get(k) == v}
        self.windows += other.windows
        self.requests += other.requests
        self.rows += other.rows
        self.errors += other.errors
        _add(self.error_codes, other.error_codes)
        _add(self.classes, other.classes)
        self.latency_ms.merge(other.latency_ms)
        self.confidence.merge(other.confidence)
        self.confidence_hist = self.confidence_hist + other.confidence_hist
        _add(self.events, other.events)
        _add(self.tiers, other.tiers)
        self.telemetry_errors += other.telemetry_errors
        self.drift_score = None  # a merged window needs its own drift test
        for name, o in other.resources.items():
            m = self.resources.get(name)
            if m is None:
                self.resources[name] = list(o)
            else:
                last = o[4] if other.end >= self.end else m[4]
                self.resources[name] = [m[0] + o[0], m[1] + o[1], min(m[2], o[2]), max(m[3], o[3]), last]
        self._merge_features(other, on_mismatch)
        return self

    def _merge_features(self, other: Window, on_mismatch: str) -> None:
        if other.feature_counts is None:
            return
        if self.feature_counts is None:
            if self.reference_id is None or self.reference_id == other.reference_id:
                self.reference_id = other.reference_id
                self.feature_counts = other.feature_counts.copy()
                self.feature_rows = other.feature_rows
                self.feature_nonfinite = other.feature_nonfinite
                self.feature_start = other.feature_start
            return
        if (
            self.reference_id != other.reference_id
            or self.feature_counts.shape[0] != other.feature_counts.shape[0]
        ):
            if on_mismatch == "drop":
                self.reference_id = "mixed"
                self.feature_counts = self.feature_start = None
                self.feature_rows = self.feature_nonfinite = 0
                return
            raise TelemetryError(
                f"cannot merge feature histograms of reference {self.reference_id} and {other.reference_id}",
                hint="merge windows per release (one reference each), or pass on_mismatch='drop'",
            )
        a, b = self.feature_counts, other.feature_counts
        w = max(a.shape[1], b.shape[1])
        out = np.zeros((a.shape[0], w), dtype=np.int64)
        out[:, : a.shape[1]] += a
        out[:, : b.shape[1]] += b
        self.feature_counts = out
        self.feature_rows += other.feature_rows
        self.feature_nonfinite += other.feature_nonfinite
        if other.feature_start is not None:
            fs = self.feature_start
            self.feature_start = other.feature_start if fs is None else min(fs, other.feature_start)

    # --- (de)serialization --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-able form; ``Window.from_dict`` reverses it exactly."""
        d: dict[str, Any] = {
            "v": WINDOW_SCHEMA_VERSION,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "windows": self.windows,
            "tags": dict(self.tags),
            "requests": self.requests,
            "rows": self.rows,
            "errors": self.errors,
            "classes": dict(self.classes),
            "latency_ms": sketch_to_dict(self.latency_ms),
            "confidence": sketch_to_dict(self.confidence),
            "confidence_hist": [int(c) for c in self.confidence_hist],
        }
        if self.error_codes:
            d["error_codes"] = dict(self.error_codes)
        if self.feature_counts is not None:
            rows = []
            for r in self.feature_counts:
                nz = np.flatnonzero(r)
                rows.append([int(c) for c in r[: (nz[-1] + 1 if len(nz) else 0)]])
            d["features"] = {
                "ref": self.reference_id,
                "start": round(self.start if self.feature_start is None else self.feature_start, 3),
                "n": self.feature_rows,
                "nonfinite": self.feature_nonfinite,
                "counts": rows,
            }
        if self.events:
            d["events"] = dict(self.events)
        if self.tiers:
            d["tiers"] = dict(self.tiers)
        if self.resources:
            d["resources"] = {k: [_round(x) for x in v] for k, v in self.resources.items()}
        if self.telemetry_errors:
            d["telemetry_errors"] = self.telemetry_errors
        if self.drift_score is not None:
            d["drift_score"] = round(self.drift_score, 4)
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(
        cls,
        data: bytes | str,
        *,
        config: WindowConfig | None = None,
        now: float | None = None,
        check_time: bool = True,
    ) -> Window:
        """Parse a serialized window, refusing oversized input before parsing it."""
        cfg = config or WindowConfig()
        if len(data) > cfg.max_bytes:
            raise PayloadTooLargeError(
                f"telemetry window is {len(data)} bytes, limit {cfg.max_bytes}",
                hint="lower the number of features or classes, or raise EDGEFLEET_WINDOW_MAX_BYTES",
            )
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _bad(f"not JSON: {e}") from e
        return cls.from_dict(doc, config=cfg, now=now, check_time=check_time)

    @classmethod
    def from_dict(
        cls, d: Any, *, config: WindowConfig | None = None, now: float | None = None, check_time: bool = True
    ) -> Window:
        """Validate and rebuild a window.

        Args:
            d: parsed JSON.
            config: limits (and the sketch accuracy the fleet uses).
            now: the receiver's wall clock (default: ``time.time()``) for future/age checks.
            check_time: False to skip the future/age checks (e.g. re-reading stored windows).

        Raises:
            ValidationError: malformed, inconsistent, from the future or too old (says which).
            PayloadTooLargeError: more classes/features/keys than the limits allow.
            SchemaVersionError: written by a newer edgefleet.
        """
        cfg = config or WindowConfig()
        if not isinstance(d, dict):
            raise _bad(f"must be a JSON object, got {type(d).__name__}")
        v = d.get("v")
        if isinstance(v, int) and not isinstance(v, bool) and v > WINDOW_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"telemetry window has schema v{v}, this edgefleet knows v{WINDOW_SCHEMA_VERSION}",
                hint="upgrade the server before the devices",
            )
        if v != WINDOW_SCHEMA_VERSION:
            raise _bad(f"unknown schema version {v!r}")
        unknown = set(d) - _TOP_KEYS
        if unknown:
            raise _bad(f"unknown fields {sorted(unknown)[:5]}")
        for k in (
            "start",
            "end",
            "requests",
            "rows",
            "errors",
            "latency_ms",
            "confidence",
            "confidence_hist",
        ):
            if k not in d:
                raise _bad(f"missing field {k!r}")
        start, end = _float(d["start"], "start"), _float(d["end"], "end")
        if end < start:
            raise _bad(f"ends ({end}) before it starts ({start})")
        if end - start > cfg.max_span_s:
            raise _bad(f"spans {end - start:.0f} s, limit {cfg.max_span_s:.0f} s")
        if check_time:
            t = time.time() if now is None else now
            if end > t + cfg.max_future_s:
                raise ValidationError(
                    f"telemetry window ends {end - t:.0f} s in the future (limit {cfg.max_future_s:.0f} s)",
                    hint="the device clock is ahead: enable NTP on the device; the window was not stored",
                    end=end,
                    now=t,
                )
            if end < t - cfg.max_age_s:
                raise ValidationError(
                    f"telemetry window ended {t - end:.0f} s ago (limit {cfg.max_age_s:.0f} s)",
                    hint="the device clock is behind or the data is stale: check NTP; the window was not stored",
                    end=end,
                    now=t,
                )
        tags = d.get("tags", {})
        if not isinstance(tags, dict) or len(tags) > cfg.max_keys:
            raise _bad(f"tags must be an object with at most {cfg.max_keys} entries")
        for k, val in tags.items():
            if not _KEY_RE.match(k) or not isinstance(val, str) or len(val) > 256:
                raise _bad(f"tag {k[:40]!r} must be a short name with a string value of at most 256 chars")
        w = cls.empty(start, tags=tags, config=cfg)
        w.end = end
        w.windows = _int(d.get("windows", 1), "windows")
        if w.windows < 1:
            raise _bad("windows must be >= 1")
        w.requests = _int(d["requests"], "requests")
        w.rows = _int(d["rows"], "rows")
        w.errors = _int(d["errors"], "errors")
        if w.errors > w.requests:
            raise _bad(f"{w.errors} errors in {w.requests} requests")
        classes = d.get("classes", {})
        if isinstance(classes, dict) and len(classes) > cfg.max_classes:
            raise PayloadTooLargeError(
                f"telemetry window has {len(classes)} classes, limit {cfg.max_classes}"
            )
        w.classes = _counter(classes, "classes", cfg.max_classes)
        if sum(w.classes.values()) > w.rows:
            raise _bad(f"class counts sum to {sum(w.classes.values())} but the window has {w.rows} rows")
        w.error_codes = _counter(d.get("error_codes", {}), "error_codes", cfg.max_keys)
        if sum(w.error_codes.values()) > w.errors:
            raise _bad("error_codes sum to more than errors")
        w.events = _counter(d.get("events", {}), "events", cfg.max_keys)
        w.tiers = _counter(d.get("tiers", {}), "tiers", cfg.max_keys)
        kw = {"relative_accuracy": cfg.relative_accuracy, "bin_limit": cfg.sketch_bin_limit}
        w.latency_ms = sketch_from_dict(d["latency_ms"], where="telemetry window latency_ms", **kw)
        w.confidence = sketch_from_dict(d["confidence"], where="telemetry window confidence", **kw)
        if w.latency_ms.count > w.requests:
            raise _bad("latency sketch holds more values than requests")
        if w.confidence.count > w.rows:
            raise _bad("confidence sketch holds more values than rows")
        ch = d["confidence_hist"]
        if not isinstance(ch, list) or len(ch) != 20:
            raise _bad("confidence_hist must hold 20 counts")
        w.confidence_hist = np.asarray(
            [_int(c, f"confidence_hist[{i}]") for i, c in enumerate(ch)], dtype=np.int64
        )
        if int(w.confidence_hist.sum()) != round(w.confidence.count):
            raise _bad("confidence_hist and the confidence sketch disagree on the count")
        if "features" in d:
            cls._features_from(w, d["features"], cfg)
        res = d.get("resources", {})
        if not isinstance(res, dict) or not set(res) <= set(RESOURCE_NAMES):
            raise _bad(f"resources must be an object with keys among {list(RESOURCE_NAMES)}")
        for k, val in res.items():
            if not isinstance(val, list) or len(val) != 5:
                raise _bad(f"resources[{k!r}] must be [n, sum, min, max, last]")
            vals = [_float(x, f"resources[{k!r}]") for x in val]
            if vals[0] < 1 or vals[2] > vals[3]:
                raise _bad(f"resources[{k!r}] is inconsistent")
            w.resources[k] = vals
        w.telemetry_errors = _int(d.get("telemetry_errors", 0), "telemetry_errors")
        ds = d.get("drift_score")
        if ds is not None:
            ds = _float(ds, "drift_score")
            if not 0.0 <= ds <= 1.0:
                raise _bad("drift_score must be in [0, 1]")
        w.drift_score = ds
        return w

    @staticmethod
    def _features_from(w: Window, f: Any, cfg: WindowConfig) -> None:
        if not isinstance(f, dict) or set(f) != {"ref", "start", "n", "nonfinite", "counts"}:
            raise _bad("features must be {ref, start, n, nonfinite, counts}")
        if not isinstance(f["ref"], str) or not _REF_RE.match(f["ref"]):
            raise _bad("features.ref must be 16 hex digits")
        fstart = _float(f["start"], "features.start")
        if fstart > w.end or w.end - fstart > cfg.max_span_s:
            raise _bad("features.start must lie before the window's end, within max_span_s")
        n = _int(f["n"], "features.n")
        nonfinite = _int(f["nonfinite"], "features.nonfinite")
        counts = f["counts"]
        if not isinstance(counts, list):
            raise _bad("features.counts must be a list")
        if len(counts) > cfg.max_features:
            raise PayloadTooLargeError(
                f"telemetry window has {len(counts)} features, limit {cfg.max_features}"
            )
        width = 0
        for j, r in enumerate(counts):
            if not isinstance(r, list) or len(r) > cfg.max_feature_width:
                raise _bad(f"features.counts[{j}] must be a list of at most {cfg.max_feature_width} counts")
            width = max(width, len(r))
        m = np.zeros((len(counts), max(width, 1)), dtype=np.int64)
        for j, r in enumerate(counts):
            for i, c in enumerate(r):
                m[j, i] = _int(c, f"features.counts[{j}][{i}]")
        sums = m.sum(axis=1)
        if len(counts) and not (sums == n).all():
            j = int(np.flatnonzero(sums != n)[0])
            raise _bad(f"features.counts[{j}] sums to {int(sums[j])}, expected n={n}")
        w.reference_id, w.feature_rows, w.feature_nonfinite, w.feature_counts = f["ref"], n, nonfinite, m
        w.feature_start = fstart


def _round(x: float) -> float | int:
    # readings (CPU %, MB, degrees, battery %) need no more than a tenth
    return int(x) if float(x).is_integer() else round(float(x), 1)


def merge_windows(windows: Iterable[Window], *, on_mismatch: Literal["raise", "drop"] = "raise") -> Window:
    """Merge windows into a new one (inputs are not changed). Order does not matter.

    Args:
        windows: at least one window.
        on_mismatch: feature histograms binned against different references cannot be added;
            ``"raise"`` (default) refuses, ``"drop"`` keeps everything else and drops the features.
    """
    it = iter(windows)
    try:
        first = next(it)
    except StopIteration:
        raise TelemetryError(
            "merge_windows needs at least one window", hint="check the query's time range"
        ) from None
    out = Window(
        start=first.start,
        end=first.end,
        latency_ms=empty_like(first.latency_ms),
        confidence=empty_like(first.latency_ms),
        tags=dict(first.tags),
        windows=0,
    )
    out.merge(first, on_mismatch=on_mismatch)
    out.drift_score = first.drift_score
    for w in it:
        out.merge(w, on_mismatch=on_mismatch)
    return out
