"""Fleet telemetry queries, drift, outliers, alerts, the retraining trigger, retention and downsampling.

The control plane stores every accepted telemetry window (``telemetry_windows``). This module reads them
back as :class:`edgefleet.telemetry.Window` objects, with tags the *server* knows (device id, device class,
region from the device record, the release the window says it ran), and answers fleet questions by
merging windows exactly (``merge_windows``): per device, device class, region, release and time range.

Retention: raw windows live ``raw_retention_s`` (2 days); older ones are merged per device, release,
reference and hour into ``telemetry_rollups`` in the same transaction that deletes them, so no window is
ever counted twice or lost; rollups live ``rollup_retention_s`` (30 days).

Alerts (drift per release/class/region against the bundle's ``reference.json``, per-device outliers,
silent devices, error rates) are kept open while observed and recorded as events in the audit log. A drift
alert seen in ``retrain_min_consecutive`` evaluations in a row proposes a retraining request, which an
admin approves (the default) before the configured webhook or command runs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import shlex
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from edgefleet.errors import ConfigError, ConflictError, EdgefleetError, InputError, NotFoundError
from edgefleet.server._fleet_models import FleetAlert, RetrainRequestRow, TelemetryRollup
from edgefleet.server._models import (
    AuditEntry,
    Device,
    Release,
    ReleaseVariant,
    Rollout,
    ServerState,
    TelemetryBatchRow,
    TelemetryWindowRow,
)
from edgefleet.telemetry import (
    AlertRules,
    CommandHook,
    DriftConfig,
    Reference,
    RetrainRequest,
    WebhookHook,
    Window,
    WindowConfig,
    detect_outliers,
    drift_by_group,
    evaluate_alerts,
    merge_windows,
)

__all__ = ["GROUP_KEYS", "FleetConfig", "FleetView", "Query", "device_health"]

log = logging.getLogger(__name__)

#: Tags a query may group or filter by (set by the server, not by the device).
GROUP_KEYS = ("device_id", "device_class", "region", "release")
_OUTLIER_METRICS = ("latency_p50_ms", "latency_p95_ms", "mean_confidence", "error_rate", "drift_score")
_NICE_BUCKETS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_DRIFT_STATE = "fleet.drift"
_ACTOR = "fleet"


class FleetConfig(BaseSettings):
    """Fleet observability settings (``EDGEFLEET_FLEET_*``); every limit has a documented default."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_FLEET_", extra="ignore")

    raw_retention_s: float = Field(2 * 86400.0, gt=0, description="raw windows are kept this long (2 days)")
    rollup_s: int = Field(3600, ge=60, le=86400, description="bucket of downsampled windows (1 hour)")
    rollup_retention_s: float = Field(30 * 86400.0, gt=0, description="downsampled windows kept (30 days)")
    maintain_batch: int = Field(5000, ge=1, description="raw windows rolled up per transaction")
    background: bool = Field(True, description="evaluate alerts and maintain storage in a server thread")
    alert_interval_s: float = Field(60.0, gt=0, description="seconds between alert evaluations")
    maintain_interval_s: float = Field(600.0, gt=0, description="seconds between retention passes")
    lookback_s: float = Field(3600.0, gt=0, description="default time range of queries and alert evaluation")
    max_range_s: float = Field(31 * 86400.0, gt=0, description="longest time range a query may cover")
    max_query_windows: int = Field(200_000, ge=1, description="stored windows one query may read")
    window_cache: int = Field(10_000, ge=0, description="parsed windows kept in memory between queries")
    silent_after_polls: float = Field(
        5.0, gt=0, description="a device is silent after this many poll intervals"
    )
    outlier_floor_latency_ms: float = Field(
        1.0, ge=0, description="latency spread below which no device is an outlier (scheduler jitter)"
    )
    outlier_floor_confidence: float = Field(0.01, ge=0, description="same for mean confidence")
    outlier_floor_error_rate: float = Field(0.005, ge=0, description="same for error rate")
    reference_cache: int = Field(16, ge=1, description="bundle references kept in memory")
    max_reference_archive_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="largest bundle archive opened to read its reference.json"
    )
    retrain_webhook_url: str | None = Field(None, description="POST retraining requests here (JSON)")
    retrain_command: str | None = Field(None, description="or run this command (request JSON on stdin)")
    retrain_require_approval: bool = Field(True, description="an admin approves before the hook runs")
    retrain_min_consecutive: int = Field(3, ge=1, description="drift evaluations in a row before a request")
    retrain_cooldown_s: float = Field(
        86400.0, ge=0, description="no new request for the same alert within this"
    )
    retrain_timeout_s: float = Field(10.0, gt=0, description="webhook/command timeout")

    @field_validator("retrain_webhook_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and v and not v.startswith(("http://", "https://")):
            raise ValueError("retrain_webhook_url must be an http:// or https:// URL")
        return v or None


@dataclass(frozen=True)
class Query:
    """What a fleet query covers: a time range and optional filters on server-side tags."""

    since: float
    until: float
    device_id: str | None = None
    device_class: str | None = None
    region: str | None = None
    release: str | None = None


def _release_of(tags: dict[str, str], device: Device | None) -> str:
    """The release a window ran: its ``release`` tag, ``model``+``version`` tags, or the device's active one."""
    rel = tags.get("release")
    if rel:
        return rel[:160]
    model, version = tags.get("model"), tags.get("version")
    if model and version:
        return f"{model}@{version}"[:160]
    if device is not None and device.active_name and device.active_version:
        return f"{device.active_name}@{device.active_version}"
    return "-"


def _split_release(label: str) -> tuple[str, str] | None:
    name, sep, version = label.partition("@")
    return (name, version) if sep and name and version else None


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def summarize(w: Window) -> dict[str, Any]:
    """The figures of a (merged) window a dashboard needs."""
    res = {k: _r(v[1] / v[0]) for k, v in w.resources.items() if v[0]}
    return {
        "start": w.start,
        "end": w.end,
        "windows": w.windows,
        "requests": w.requests,
        "rows": w.rows,
        "errors": w.errors,
        "error_rate": _r(w.error_rate, 6),
        "latency_p50_ms": _r(w.latency_quantile(0.5)),
        "latency_p95_ms": _r(w.latency_quantile(0.95)),
        "latency_p99_ms": _r(w.latency_quantile(0.99)),
        "mean_confidence": _r(w.mean_confidence),
        "confidence_p05": _r(w.confidence_quantile(0.05)),
        "classes": dict(w.classes),
        "events": dict(w.events),
        "resources_mean": res,
    }


def device_health(
    d: Device, now: float, *, offline_after_s: float, rules: AlertRules, drift_threshold: float
) -> str:
    """One word for a device's model health: healthy, degraded, failing, unknown, offline or revoked."""
    if d.revoked:
        return "revoked"
    if now - d.last_seen >= offline_after_s:
        return "offline"
    state = (d.state or "").lower()
    if (
        d.h_golden is False
        or "fail" in state
        or "rolled_back" in state
        or (d.last_error and "error" in state)
    ):
        return "failing"
    req = d.h_requests or 0
    if req >= rules.min_requests and (d.h_errors or 0) / req > rules.max_error_rate:
        return "degraded"
    if d.h_drift is not None and d.h_drift >= drift_threshold:
        return "degraded"
    if req == 0 and d.h_golden is None:
        return "unknown"
    return "healthy"


def _status(d: Device, now: float, stale_after_s: float, offline_after_s: float) -> str:
    if d.revoked:
        return "revoked"
    age = now - d.last_seen
    return "offline" if age >= offline_after_s else "stale" if age >= stale_after_s else "online"


def _audit(s: Session, action: str, now: float, *, device_id: str | None = None, **details: Any) -> None:
    s.add(AuditEntry(at=now, actor=_ACTOR, action=action, device_id=device_id, details=details))


# --- references --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VariantRef:
    variant: str
    device_classes: tuple[str, ...]
    reference: Reference | None
    error: str | None


class _References:
    """``reference.json`` of published bundles, read from the server's TUF targets and cached by sha256."""

    def __init__(self, targets_dir: Path, *, size: int, max_bytes: int) -> None:
        self.targets_dir = Path(targets_dir)
        self.size, self.max_bytes = size, max_bytes
        self._cache: OrderedDict[str, tuple[Reference | None, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def _path(self, target_path: str, sha256: str) -> Path | None:
        base = self.targets_dir.resolve()
        dirname, _, basename = target_path.rpartition("/")
        for rel in (f"{dirname}/{sha256}.{basename}" if dirname else f"{sha256}.{basename}", target_path):
            p = (base / rel).resolve()
            if p.is_relative_to(base) and p.is_file():
                return p
        return None

    def get(self, target_path: str, sha256: str, length: int) -> tuple[Reference | None, str | None]:
        with self._lock:
            hit = self._cache.get(sha256)
            if hit is not None:
                self._cache.move_to_end(sha256)
                return hit
        out = self._load(target_path, sha256, length)
        with self._lock:
            self._cache[sha256] = out
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return out

    def _load(self, target_path: str, sha256: str, length: int) -> tuple[Reference | None, str | None]:
        from edgefleet.bundle import Bundle

        p = self._path(target_path, sha256)
        if p is None:
            return None, f"bundle {target_path} is not in the server's repository ({self.targets_dir})"
        size = p.stat().st_size
        if size != length or size > self.max_bytes:
            return (
                None,
                f"bundle {target_path} has {size} bytes, registered {length} (limit {self.max_bytes})",
            )
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != sha256:
            return None, f"bundle {target_path} does not match its registered sha256"
        try:
            with Bundle.open(p) as b:
                doc = b.reference
            if doc is None:
                return None, f"bundle {target_path} has no reference.json"
            return Reference.from_dict(doc), None
        except EdgefleetError as e:
            log.warning("cannot read the reference of %s: %s", target_path, e.message)
            return None, f"bundle {target_path}: {e.message}"


# --- the view ----------------------------------------------------------------------------------


class FleetView:
    """Fleet queries and alerting over one control plane's database (thread-safe, one per app).

    Args:
        ctx: the server's ``ServerContext`` (database, config, clock, repository, rollout engine).
        config: fleet settings (default: from ``EDGEFLEET_FLEET_*``).
        rules: alert rules (default: from ``EDGEFLEET_ALERTS_*``; ``silent_after_s`` is replaced by
            ``silent_after_polls`` x the server's poll interval).
        drift_config: drift thresholds (default: from ``EDGEFLEET_DRIFT_*``).
    """

    def __init__(
        self,
        ctx: Any,
        config: FleetConfig | None = None,
        *,
        rules: AlertRules | None = None,
        drift_config: DriftConfig | None = None,
    ) -> None:
        self.ctx = ctx
        self.config = config or FleetConfig()
        if self.config.retrain_webhook_url and self.config.retrain_command:
            raise ConfigError(
                "both a retraining webhook and a retraining command are configured",
                hint="set only one of EDGEFLEET_FLEET_RETRAIN_WEBHOOK_URL and EDGEFLEET_FLEET_RETRAIN_COMMAND",
            )
        base = rules or AlertRules()
        self.rules = base.model_copy(
            update={"silent_after_s": self.config.silent_after_polls * ctx.config.poll_interval_s}
        )
        self.drift_config = drift_config or DriftConfig()
        self.references = _References(
            ctx.repo.targets_dir,
            size=self.config.reference_cache,
            max_bytes=self.config.max_reference_archive_bytes,
        )
        self._window_config = WindowConfig()  # built once: settings objects read the environment
        self._cache: OrderedDict[tuple, Window] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def db(self) -> Any:
        return self.ctx.db

    def now(self) -> float:
        return self.ctx.clock()

    # --- query helpers -------------------------------------------------------------------------

    def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        range_s: float | None = None,
        device_id: str | None = None,
        device_class: str | None = None,
        region: str | None = None,
        release: str | None = None,
    ) -> Query:
        """Build a checked :class:`Query` (default: the last ``lookback_s`` seconds)."""
        now = self.now()
        until = now if until is None else until
        if since is None:
            since = until - (range_s if range_s is not None else self.config.lookback_s)
        for name, v in (("since", since), ("until", until)):
            if not math.isfinite(v):
                raise InputError(f"{name} must be a finite UNIX time", hint="pass seconds since the epoch")
        if until <= since:
            raise InputError(f"until ({until}) must be after since ({since})", hint="swap or widen the range")
        if until - since > self.config.max_range_s:
            raise InputError(
                f"the range covers {(until - since) / 86400:.1f} days, limit {self.config.max_range_s / 86400:.1f}",
                hint="narrow the time range (EDGEFLEET_FLEET_MAX_RANGE_S raises the limit)",
            )
        return Query(since, until, device_id, device_class, region, release)

    @staticmethod
    def parse_by(by: str | Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
        """Validate a list of group keys (comma-separated or a sequence)."""
        if by is None or by == "":
            return tuple(default)
        keys = [k.strip() for k in (by.split(",") if isinstance(by, str) else by) if k.strip()]
        bad = [k for k in keys if k not in GROUP_KEYS]
        if bad or not keys or len(set(keys)) != len(keys):
            raise InputError(
                f"cannot group by {','.join(keys) or '(nothing)'}",
                hint=f"group by distinct keys among {', '.join(GROUP_KEYS)}",
            )
        return tuple(keys)

    def _cached(self, key: tuple) -> Window | None:
        if not self.config.window_cache:
            return None
        with self._cache_lock:
            w = self._cache.get(key)
            if w is not None:
                self._cache.move_to_end(key)
            return w

    def _parse(self, key: tuple, data: Any) -> Window | None:
        try:
            w = Window.from_dict(data, config=self._window_config, check_time=False)
        except EdgefleetError as e:
            log.warning("stored telemetry window %s is unreadable: %s", key, e.message)
            return None
        if self.config.window_cache:
            with self._cache_lock:
                self._cache[key] = w
                while len(self._cache) > self.config.window_cache:
                    self._cache.popitem(last=False)
        return w

    def load(self, q: Query, *, s: Session | None = None) -> tuple[list[Window], dict[str, Any]]:
        """Stored windows (raw and rolled up) overlapping ``q``, tagged by the server.

        Returns:
            The windows and facts about the read (rows read, unreadable rows skipped).

        Raises:
            InputError: the query would read more than ``max_query_windows`` windows.
        """
        if s is None:
            with self.db.read() as s2:
                return self.load(q, s=s2)
        devices = {d.id: d for d in s.scalars(select(Device))}
        ids = [
            d.id
            for d in devices.values()
            if (q.device_id is None or d.id == q.device_id)
            and (q.device_class is None or d.device_class == q.device_class)
            and (q.region is None or (d.tags or {}).get("region") == q.region)
        ]
        filtered = q.device_id is not None or q.device_class is not None or q.region is not None
        if filtered and not ids:
            return [], {"raw": 0, "rolled_up": 0, "unreadable": 0, "devices": 0}
        res = self.config.rollup_s
        # rollups first, then raw: if a retention pass commits in between, windows are missed for one
        # query rather than counted twice
        rq = select(TelemetryRollup).where(
            TelemetryRollup.bucket < q.until,
            TelemetryRollup.bucket >= q.since - 2 * max(res, 86400),
            TelemetryRollup.end > q.since,
            TelemetryRollup.start < q.until,
        )
        wq = select(TelemetryWindowRow.id, TelemetryWindowRow.device_id).where(
            TelemetryWindowRow.end > q.since, TelemetryWindowRow.start < q.until
        )
        if filtered:
            rq = rq.where(TelemetryRollup.device_id.in_(ids))
            wq = wq.where(TelemetryWindowRow.device_id.in_(ids))
        if q.release is not None:
            rq = rq.where(TelemetryRollup.release == q.release)
        out: list[Window] = []
        bad = 0
        n_roll = 0
        for row in s.scalars(rq):
            # a rollup only grows: its window count versions it (updated_at may repeat under a fixed clock)
            key = ("r", row.id, row.windows, row.updated_at)
            w = self._cached(key) or self._parse(key, row.data)
            if w is None:
                bad += 1
                continue
            n_roll += 1
            out.append(self._tagged(w, devices.get(row.device_id), row.device_id, row.release))
        # ids first: the limit is checked before any window is read, and cached windows are not decoded again
        rows = s.execute(wq).all()
        n_raw = len(rows)
        if n_raw > self.config.max_query_windows:
            raise InputError(
                f"the query covers {n_raw} stored windows, limit {self.config.max_query_windows}",
                hint="narrow the time range or filter by device class, region or device",
            )
        got: dict[int, Window | None] = {}
        for wid, _ in rows:
            w = self._cached(("w", wid))
            if w is not None:
                got[wid] = w
        missing = [wid for wid, _ in rows if wid not in got]
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            q_data = select(TelemetryWindowRow.id, TelemetryWindowRow.data).where(
                TelemetryWindowRow.id.in_(chunk)
            )
            for wid, data in s.execute(q_data):
                got[wid] = self._parse(("w", wid), data)
        for wid, dev_id in rows:
            w = got.get(wid)
            if w is None:
                bad += 1
                continue
            tw = self._tagged(w, devices.get(dev_id), dev_id, None)
            if q.release is not None and tw.tags["release"] != q.release:
                continue
            out.append(tw)
        n_dev = len({w.tags["device_id"] for w in out})
        return out, {"raw": n_raw, "rolled_up": n_roll, "unreadable": bad, "devices": n_dev}

    @staticmethod
    def _tagged(w: Window, d: Device | None, device_id: str, release: str | None) -> Window:
        # a shallow copy: cached windows are shared, and merges never change their inputs
        tags = {
            "device_id": device_id,
            "device_class": d.device_class if d is not None else "-",
            "region": str((d.tags or {}).get("region", "-")) if d is not None else "-",
            "release": release or _release_of(w.tags, d),
        }
        return replace(w, tags=tags)

    # --- queries -------------------------------------------------------------------------------

    def merged(self, q: Query, by: Sequence[str]) -> dict[str, Any]:
        """Windows merged per group of ``by`` tags, with the figures of each group."""
        ws, facts = self.load(q)
        groups: dict[tuple[str, ...], list[Window]] = {}
        for w in ws:
            groups.setdefault(tuple(w.tags[k] for k in by), []).append(w)
        out = []
        for key, members in sorted(groups.items()):
            m = merge_windows(members, on_mismatch="drop")
            out.append(
                {
                    "group": dict(zip(by, key, strict=True)),
                    "devices": len({w.tags["device_id"] for w in members}),
                    **summarize(m),
                }
            )
        return {"since": q.since, "until": q.until, "by": list(by), "groups": out, "read": facts}

    def window(self, q: Query) -> dict[str, Any]:
        """All windows of the query merged into one, serialized (``Window.to_dict``), or None."""
        ws, facts = self.load(q)
        return {"window": merge_windows(ws, on_mismatch="drop").to_dict() if ws else None, "read": facts}

    def timeseries(
        self, q: Query, by: Sequence[str] = ("release",), bucket_s: int | None = None
    ) -> dict[str, Any]:
        """Latency and confidence over time, one series per group (release by default)."""
        span = q.until - q.since
        if bucket_s is None:
            bucket_s = next((b for b in _NICE_BUCKETS if span / b <= 60), _NICE_BUCKETS[-1])
        if bucket_s < 1 or span / bucket_s > 2000:
            raise InputError(
                f"bucket_s={bucket_s} gives {span / max(bucket_s, 1):.0f} points, limit 2000",
                hint="use a larger bucket or a shorter range",
            )
        ws, facts = self.load(q)
        series: dict[tuple[str, ...], dict[float, list[Window]]] = {}
        for w in ws:
            key = tuple(w.tags[k] for k in by)
            t = math.floor(max(w.start, q.since) / bucket_s) * bucket_s
            series.setdefault(key, {}).setdefault(t, []).append(w)
        out = []
        for key, buckets in sorted(series.items()):
            points = []
            for t, members in sorted(buckets.items()):
                m = merge_windows(members, on_mismatch="drop")
                points.append(
                    {
                        "t": t,
                        "requests": m.requests,
                        "errors": m.errors,
                        "latency_p50_ms": _r(m.latency_quantile(0.5)),
                        "latency_p95_ms": _r(m.latency_quantile(0.95)),
                        "mean_confidence": _r(m.mean_confidence),
                        "confidence_p05": _r(m.confidence_quantile(0.05)),
                    }
                )
            out.append({"group": dict(zip(by, key, strict=True)), "points": points})
        return {
            "since": q.since,
            "until": q.until,
            "bucket_s": bucket_s,
            "by": list(by),
            "series": out,
            "read": facts,
        }

    def per_device(self, ws: Iterable[Window]) -> dict[str, Window]:
        groups: dict[str, list[Window]] = {}
        for w in ws:
            groups.setdefault(w.tags["device_id"], []).append(w)
        return {d: merge_windows(v, on_mismatch="drop") for d, v in groups.items()}

    def _floor(self, metric: str) -> float:
        c = self.config
        if metric.startswith("latency"):
            return c.outlier_floor_latency_ms
        return {"mean_confidence": c.outlier_floor_confidence, "error_rate": c.outlier_floor_error_rate}.get(
            metric, 0.0
        )

    def _keep(self, metric: str, value: float, median: float, robust_z: float, z: float) -> bool:
        """Apply an absolute floor to the robust scale: sub-millisecond jitter does not make an outlier."""
        if robust_z == 0:
            return False
        scale = max(abs((value - median) / robust_z), self._floor(metric))
        return abs(value - median) / scale > z

    def outliers(
        self,
        q: Query,
        *,
        group_by: Sequence[str] = ("device_class",),
        metrics: Sequence[str] = ("latency_p95_ms", "mean_confidence", "error_rate"),
        z: float | None = None,
        min_devices: int | None = None,
    ) -> dict[str, Any]:
        """Devices whose latency, confidence or error rate sits far from their peers (robust z-score)."""
        bad = [m for m in metrics if m not in _OUTLIER_METRICS]
        if bad or not metrics:
            raise InputError(
                f"unknown outlier metrics {bad}", hint=f"use some of {', '.join(_OUTLIER_METRICS)}"
            )
        ws, facts = self.load(q)
        per = self.per_device(ws)
        z = self.rules.outlier_z if z is None else z
        found = detect_outliers(
            per,
            group_by=group_by,
            metrics=metrics,
            z=z,
            min_devices=self.rules.outlier_min_devices if min_devices is None else min_devices,
            min_requests=self.rules.min_requests,
        )
        out = []
        for o in found:
            if not self._keep(o.metric, o.value, o.median, o.robust_z, z):
                continue
            w = per[o.device_id]
            out.append(
                {
                    "device_id": o.device_id,
                    "group": dict(zip(group_by, o.group, strict=True)),
                    "metric": o.metric,
                    "value": _r(o.value),
                    "median": _r(o.median),
                    "robust_z": o.robust_z,
                    "direction": o.direction,
                    "peers": o.peers,
                    "requests": w.requests,
                    "region": w.tags.get("region", "-"),
                    "release": w.tags.get("release", "-"),
                }
            )
        return {
            "since": q.since,
            "until": q.until,
            "group_by": list(group_by),
            "metrics": list(metrics),
            "devices": len(per),
            "outliers": out,
            "read": facts,
        }

    def _release_refs(self, s: Session, label: str) -> tuple[list[_VariantRef], str | None]:
        nv = _split_release(label)
        if nv is None:
            return [], f"windows of release {label!r} do not name a registered release"
        rel = s.scalars(select(Release).where(Release.name == nv[0], Release.version == nv[1])).one_or_none()
        if rel is None:
            return [], f"release {nv[0]} {nv[1]} is not registered on this server"
        out = []
        for v in s.scalars(
            select(ReleaseVariant).where(ReleaseVariant.release_id == rel.id).order_by(ReleaseVariant.id)
        ):
            ref, err = self.references.get(v.target_path, v.sha256, v.length)
            out.append(_VariantRef(v.variant, tuple(v.device_classes or ()), ref, err))
        if not any(x.reference for x in out):
            return out, "; ".join(x.error for x in out if x.error) or f"{label} has no reference statistics"
        return out, None

    def _drift_reports(
        self, q: Query, by: Sequence[str], ws: list[Window] | None = None
    ) -> tuple[list[tuple[str, str, tuple[str, ...], Any, int]], list[dict[str, Any]], dict[str, Any]]:
        """(release, variant, group key, DriftReport, devices) per group, the releases skipped, read facts."""
        with self.db.read() as s:
            facts: dict[str, Any] = {}
            if ws is None:
                ws, facts = self.load(q, s=s)
            per_release: dict[str, list[Window]] = {}
            for w in ws:
                per_release.setdefault(w.tags["release"], []).append(w)
            refs = {label: self._release_refs(s, label) for label in per_release}
        results = []
        skipped: list[dict[str, Any]] = []
        for label, rws in sorted(per_release.items()):
            variants, err = refs[label]
            usable = [v for v in variants if v.reference is not None]
            if not usable:
                skipped.append({"release": label, "windows": len(rws), "reason": err})
                continue
            by_ref: dict[int, list[Window]] = {}
            for w in rws:
                by_ref.setdefault(self._pick_ref(w, usable), []).append(w)
            for i, rw in sorted(by_ref.items()):
                v = usable[i]
                devs: dict[tuple[str, ...], set[str]] = {}
                for w in rw:
                    devs.setdefault(tuple(w.tags[k] for k in by), set()).add(w.tags["device_id"])
                for key, rep in drift_by_group(rw, v.reference, by=by, config=self.drift_config).items():
                    results.append((label, v.variant, key, rep, len(devs.get(key, ()))))
        return results, skipped, facts

    def drift(self, q: Query, by: Sequence[str] = ("device_class", "region")) -> dict[str, Any]:
        """Drift of merged windows per release and group against the release's bundle reference."""
        results, skipped, facts = self._drift_reports(q, by)
        groups = []
        for label, variant, key, rep, n_dev in results:
            groups.append(
                {
                    "release": label,
                    "variant": variant,
                    "group": dict(zip(by, key, strict=True)),
                    "devices": n_dev,
                    **rep.to_dict(tests=False),
                    "top": [
                        {
                            "name": t.name,
                            "kind": t.kind,
                            "psi": _r(t.psi),
                            "p_adjusted": _r(t.p_adjusted, 8),
                            "fired": t.fired,
                        }
                        for t in rep.top(3)
                    ],
                }
            )
        return {
            "since": q.since,
            "until": q.until,
            "by": list(by),
            "threshold": self.drift_config.threshold,
            "groups": groups,
            "skipped": skipped,
            "read": facts,
        }

    @staticmethod
    def _pick_ref(w: Window, usable: list[_VariantRef]) -> int:
        if w.reference_id is not None:
            for i, v in enumerate(usable):
                if v.reference.id == w.reference_id:
                    return i
        for i, v in enumerate(usable):
            if w.tags["device_class"] in v.device_classes:
                return i
        return 0

    # --- overview, rollouts, events ------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Counts for the fleet page: devices by status, version, class, region, health and agent state."""
        now = self.now()
        cfg = self.ctx.config
        by: dict[str, dict[str, int]] = {
            k: {} for k in ("status", "version", "class", "region", "health", "state")
        }

        def bump(kind: str, key: str) -> None:
            by[kind][key] = by[kind].get(key, 0) + 1

        with self.db.read() as s:
            devices = list(s.scalars(select(Device)))
            for d in devices:
                bump("status", _status(d, now, cfg.stale_after_s, cfg.offline_after_s))
                if d.revoked:
                    continue
                bump("version", f"{d.active_name}@{d.active_version}" if d.active_version else "none")
                bump("class", d.device_class)
                bump("region", str((d.tags or {}).get("region", "-")))
                bump(
                    "health",
                    device_health(
                        d,
                        now,
                        offline_after_s=cfg.offline_after_s,
                        rules=self.rules,
                        drift_threshold=self.drift_config.threshold,
                    ),
                )
                bump("state", d.state or "-")
            rollouts = dict(s.execute(select(Rollout.state, func.count()).group_by(Rollout.state)).all())
            raw = s.scalar(select(func.count()).select_from(TelemetryWindowRow)) or 0
            recent = (
                s.scalar(
                    select(func.count())
                    .select_from(TelemetryWindowRow)
                    .where(TelemetryWindowRow.received_at > now - 3600)
                )
                or 0
            )
            batches = s.scalar(select(func.count()).select_from(TelemetryBatchRow)) or 0
            rollups = s.scalar(select(func.count()).select_from(TelemetryRollup)) or 0
            alerts = dict(
                s.execute(
                    select(FleetAlert.rule, func.count())
                    .where(FleetAlert.state == "open")
                    .group_by(FleetAlert.rule)
                ).all()
            )
            pending = (
                s.scalar(
                    select(func.count())
                    .select_from(RetrainRequestRow)
                    .where(RetrainRequestRow.status == "pending")
                )
                or 0
            )
        return {
            "now": now,
            "devices": {"total": len(devices), **{f"by_{k}": dict(sorted(v.items())) for k, v in by.items()}},
            "rollouts": {"by_state": {k: int(v) for k, v in rollouts.items()}},
            "telemetry": {
                "windows_raw": raw,
                "windows_last_hour": recent,
                "batches": batches,
                "rollups": rollups,
            },
            "alerts": {"open": sum(alerts.values()), "by_rule": {k: int(v) for k, v in alerts.items()}},
            "retrain": {"pending": pending},
        }

    def devices(self, *, limit: int = 200) -> list[dict[str, Any]]:
        """A compact device table (id, class, region, version, status, health, last seen)."""
        now = self.now()
        cfg = self.ctx.config
        with self.db.read() as s:
            rows = list(s.scalars(select(Device).order_by(Device.enrolled_at, Device.id).limit(limit)))
            return [
                {
                    "id": d.id,
                    "name": d.name,
                    "class": d.device_class,
                    "region": (d.tags or {}).get("region", "-"),
                    "version": f"{d.active_name}@{d.active_version}" if d.active_version else None,
                    "status": _status(d, now, cfg.stale_after_s, cfg.offline_after_s),
                    "health": device_health(
                        d,
                        now,
                        offline_after_s=cfg.offline_after_s,
                        rules=self.rules,
                        drift_threshold=self.drift_config.threshold,
                    ),
                    "state": d.state,
                    "last_seen_s_ago": round(now - d.last_seen, 1),
                }
                for d in rows
            ]

    def rollouts(self, *, limit: int = 10) -> list[dict[str, Any]]:
        """Recent rollouts with, per wave, its state and the gate figures that decided it."""
        items = self.ctx.engine.list(limit=limit)
        ids = [r["id"] for r in items]
        decided: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}
        if ids:
            with self.db.read() as s:
                q = (
                    select(AuditEntry)
                    .where(
                        AuditEntry.rollout_id.in_(ids),
                        AuditEntry.action.in_(("rollout.wave_passed", "rollout.gate_failed")),
                    )
                    .order_by(AuditEntry.id)
                )
                for a in s.scalars(q):
                    wave = (a.details or {}).get("wave")
                    if isinstance(wave, int):
                        status = "passed" if a.action == "rollout.wave_passed" else "failed"
                        decided[(a.rollout_id, wave)] = (status, (a.details or {}).get("evaluation") or {})
        out = []
        for r in items:
            waves = []
            for i, pct in enumerate(r["waves"]):
                n = i + 1
                if (r["id"], n) in decided:
                    status, ev = decided[(r["id"], n)]
                elif n == r["wave"] and r["state"] not in ("completed", "aborted", "rolled_back"):
                    ev = r.get("evaluation") or {}
                    status = "current"
                else:
                    status, ev = ("pending" if n > r["wave"] else "skipped"), {}
                waves.append(
                    {
                        "wave": n,
                        "percent": pct,
                        "status": status,
                        "verdict": ev.get("status"),
                        "counts": ev.get("counts") or {},
                        "waiting_for": ev.get("waiting_for") or [],
                        "gates": [
                            {
                                k: g.get(k)
                                for k in ("name", "status", "value", "threshold", "reference", "detail")
                            }
                            for g in ev.get("gates") or []
                        ],
                    }
                )
            out.append(
                {
                    k: r.get(k)
                    for k in (
                        "id",
                        "name",
                        "version",
                        "selector",
                        "state",
                        "wave",
                        "policy",
                        "reason",
                        "created_at",
                        "updated_at",
                        "members",
                    )
                }
                | {"waves": waves}
            )
        return out

    def events(
        self, *, limit: int = 50, prefix: str | None = None, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Recent audit entries (rollout transitions, alerts, retraining), newest first."""
        with self.db.read() as s:
            q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if prefix:
                q = q.where(AuditEntry.action.startswith(prefix, autoescape=True))
            if before_id is not None:
                q = q.where(AuditEntry.id < before_id)
            return [
                {
                    **a.to_dict(),
                    "message": (a.details or {}).get("message") or (a.details or {}).get("reason"),
                }
                for a in s.scalars(q)
            ]

    # --- alerts --------------------------------------------------------------------------------

    def alerts(self, *, state: str | None = "open", limit: int = 200) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(FleetAlert).order_by(FleetAlert.last_at.desc(), FleetAlert.id.desc()).limit(limit)
            if state:
                q = q.where(FleetAlert.state == state)
            return [_alert_dict(a) for a in s.scalars(q)]

    def evaluate(self, now: float | None = None) -> dict[str, Any]:
        """Evaluate the alert rules over the last ``lookback_s`` and record what changed.

        New alerts are recorded as ``alert.raised`` events, alerts no longer observed as ``alert.resolved``;
        a drift alert seen ``retrain_min_consecutive`` times in a row proposes a retraining request.

        Returns:
            ``{"raised": [...], "resolved": [...], "open": n, "retrain_requests": [...]}``.
        """
        now = self.now() if now is None else now
        q = Query(now - self.config.lookback_s, now)
        with self.db.read() as s:
            ws, _ = self.load(q, s=s)
            last_seen = {
                d.id: d.last_seen for d in s.scalars(select(Device).where(Device.revoked.is_(False)))
            }
        per = self.per_device(ws)
        by = ("release", "device_class", "region")
        group_drift = {}
        drift_rows = []
        if ws:
            results, _, _ = self._drift_reports(q, by, ws)
            for _label, variant, key, rep, n_dev in results:
                group_drift[key] = rep
                drift_rows.append(
                    {
                        **dict(zip(by, key, strict=True)),
                        "variant": variant,
                        "score": round(rep.score, 4),
                        "drifted": rep.drifted,
                        "rows": rep.rows,
                        "devices": n_dev,
                    }
                )
        found = evaluate_alerts(
            device_windows=per,
            group_drift=group_drift,
            group_by=by,
            last_seen=last_seen,
            now=now,
            rules=self.rules,
        )
        found = {
            _alert_key(a.key): a
            for a in found
            if a.rule != "outlier"
            or self._keep(
                a.evidence["metric"],
                a.evidence["value"],
                a.evidence["median"],
                a.evidence["robust_z"],
                self.rules.outlier_z,
            )
        }
        raised, resolved, created = [], [], []
        with self.db.write() as s:
            self.db.lock(s, "fleet-alerts")
            current = {a.key: a for a in s.scalars(select(FleetAlert).where(FleetAlert.state == "open"))}
            for key, a in found.items():
                row = current.get(key)
                if row is None:
                    row = FleetAlert(
                        key=key,
                        rule=a.rule,
                        severity=a.severity,
                        state="open",
                        message=a.message,
                        subject=dict(a.subject),
                        value=_r(a.value, 6),
                        threshold=a.threshold,
                        evidence=_jsonable(a.evidence),
                        first_at=now,
                        last_at=now,
                        evaluations=1,
                    )
                    s.add(row)
                    _audit(
                        s,
                        "alert.raised",
                        now,
                        device_id=a.subject.get("device_id"),
                        key=key,
                        rule=a.rule,
                        severity=a.severity,
                        message=a.message,
                        value=_r(a.value, 6),
                        subject=dict(a.subject),
                    )
                    raised.append(key)
                else:
                    row.severity, row.message, row.value = a.severity, a.message, _r(a.value, 6)
                    row.evidence, row.last_at = _jsonable(a.evidence), now
                    row.evaluations += 1
            for key, row in current.items():
                if key not in found:
                    row.state, row.resolved_at = "resolved", now
                    _audit(
                        s,
                        "alert.resolved",
                        now,
                        device_id=(row.subject or {}).get("device_id"),
                        key=key,
                        rule=row.rule,
                        message=f"resolved: {row.message}",
                    )
                    resolved.append(key)
            s.flush()
            for row in s.scalars(
                select(FleetAlert).where(FleetAlert.state == "open", FleetAlert.rule == "drift")
            ):
                req = self._propose(s, row, now)
                if req is not None:
                    created.append(req)
            s.merge(ServerState(key=_DRIFT_STATE, value={"at": now, "groups": drift_rows}, updated_at=now))
            n_open = (
                s.scalar(select(func.count()).select_from(FleetAlert).where(FleetAlert.state == "open")) or 0
            )
        fired = []
        if not self.config.retrain_require_approval:
            for rid in created:
                fired.append(self._fire(rid, _ACTOR))
        return {
            "at": now,
            "raised": raised,
            "resolved": resolved,
            "open": n_open,
            "retrain_requests": created,
            "fired": fired,
        }

    def _propose(self, s: Session, alert: FleetAlert, now: float) -> str | None:
        if alert.evaluations < self.config.retrain_min_consecutive:
            return None
        last = s.scalar(
            select(func.max(RetrainRequestRow.created_at)).where(RetrainRequestRow.alert_key == alert.key)
        )
        if last is not None and now - last < self.config.retrain_cooldown_s:
            return None
        rel = _split_release((alert.subject or {}).get("release", ""))
        rid = secrets.token_hex(8)
        s.add(
            RetrainRequestRow(
                id=rid,
                created_at=now,
                model=(rel[0] if rel else "-")[:64],
                alert_key=alert.key,
                reason=alert.message,
                subject=dict(alert.subject or {}),
                evidence={
                    "alert_id": alert.id,
                    "score": alert.value,
                    "consecutive": alert.evaluations,
                    **{k: v for k, v in (alert.evidence or {}).items() if k != "tests"},
                },
                status="pending",
                hook=self._hook_name(),
            )
        )
        _audit(
            s,
            "retrain.requested",
            now,
            request_id=rid,
            key=alert.key,
            message=f"retraining proposed: {alert.message}",
            requires_approval=self.config.retrain_require_approval,
        )
        log.info("retraining proposed for %s (%s)", alert.key, rid)
        return rid

    # --- retraining requests -------------------------------------------------------------------

    def retrain_requests(self, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(RetrainRequestRow).order_by(RetrainRequestRow.created_at.desc()).limit(limit)
            if status:
                q = q.where(RetrainRequestRow.status == status)
            return [_request_dict(r) for r in s.scalars(q)]

    def _hook_name(self) -> str | None:
        if self.config.retrain_webhook_url:
            return f"webhook {self.config.retrain_webhook_url}"[:512]
        if self.config.retrain_command:
            return f"command {self.config.retrain_command}"[:512]
        return None

    def _hook(self) -> Any:
        c = self.config
        if c.retrain_webhook_url:
            return WebhookHook(c.retrain_webhook_url, timeout_s=c.retrain_timeout_s)
        if c.retrain_command:
            return CommandHook(shlex.split(c.retrain_command), timeout_s=c.retrain_timeout_s)
        return None

    def approve(self, request_id: str, actor: str) -> dict[str, Any]:
        """Approve a pending request and run the hook (status ends fired, failed, or approved without a hook)."""
        return self._fire(request_id, actor)

    def reject(self, request_id: str, actor: str) -> dict[str, Any]:
        now = self.now()
        with self.db.write() as s:
            row = self._pending(s, request_id)
            row.status, row.decided_by, row.decided_at = "rejected", actor, now
            _audit(
                s, "retrain.rejected", now, request_id=request_id, by=actor, message=f"rejected by {actor}"
            )
            return _request_dict(row)

    def _pending(self, s: Session, request_id: str) -> RetrainRequestRow:
        row = s.get(RetrainRequestRow, request_id)
        if row is None:
            raise NotFoundError(
                f"no retraining request {request_id!r}",
                hint="list them: GET /v1/fleet/retrain-requests?status=pending",
            )
        if row.status != "pending":
            raise ConflictError(
                f"retraining request {request_id} is already {row.status}",
                hint="only pending requests can be approved or rejected",
            )
        return row

    def _fire(self, request_id: str, actor: str) -> dict[str, Any]:
        now = self.now()
        with self.db.write() as s:
            row = self._pending(s, request_id)
            row.status, row.decided_by, row.decided_at = "approved", actor, now
            row.hook = self._hook_name()
            _audit(
                s, "retrain.approved", now, request_id=request_id, by=actor, message=f"approved by {actor}"
            )
            req = RetrainRequest(
                id=row.id,
                created=row.created_at,
                model=row.model,
                reason=row.reason,
                subject=dict(row.subject),
                evidence=dict(row.evidence),
                status="approved",
                decided_by=actor,
                decided_at=now,
            )
        hook = self._hook()
        if hook is None:
            log.warning("retraining request %s approved, but no hook is configured", request_id)
            return self._get_request(request_id)
        error = None
        try:
            hook(req)  # outside any transaction: a slow webhook holds no database lock
        except Exception as e:  # noqa: BLE001 - recorded on the request and shown to the operator
            error = getattr(e, "message", None) or str(e)
            log.warning("retraining hook failed for %s: %s", request_id, error)
        done = self.now()
        with self.db.write() as s:
            row = s.get(RetrainRequestRow, request_id)
            row.status, row.fired_at, row.error = ("failed" if error else "fired"), done, error
            _audit(
                s,
                "retrain.failed" if error else "retrain.fired",
                done,
                request_id=request_id,
                hook=row.hook,
                message=error or f"retraining started via {row.hook}",
            )
            return _request_dict(row)

    def _get_request(self, request_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            return _request_dict(s.get(RetrainRequestRow, request_id))

    # --- retention and downsampling ------------------------------------------------------------

    def maintain(self, now: float | None = None) -> dict[str, Any]:
        """Roll raw windows older than ``raw_retention_s`` up per hour; delete rollups past their retention.

        Each batch of raw windows is merged into its rollup rows and deleted in one transaction, so a
        crash leaves every window either raw or rolled up. Unreadable rows are left in place and counted.
        """
        now = self.now() if now is None else now
        cut = now - self.config.raw_retention_s
        res = self.config.rollup_s
        report = {"rolled_up": 0, "rollups_written": 0, "rollups_deleted": 0, "unreadable": 0}
        last_id = 0
        while True:
            with self.db.write() as s:
                self.db.lock(s, "fleet-maintain")
                rows = list(
                    s.execute(
                        select(TelemetryWindowRow.id, TelemetryWindowRow.device_id, TelemetryWindowRow.data)
                        .where(TelemetryWindowRow.id > last_id, TelemetryWindowRow.end < cut)
                        .order_by(TelemetryWindowRow.id)
                        .limit(self.config.maintain_batch)
                    )
                )
                if not rows:
                    break
                last_id = rows[-1][0]
                devices = {
                    d.id: d for d in s.scalars(select(Device).where(Device.id.in_({r[1] for r in rows})))
                }
                groups: dict[tuple[str, str, str, float], list[Window]] = {}
                done: list[int] = []
                for wid, dev_id, data in rows:
                    try:
                        w = Window.from_dict(data, config=self._window_config, check_time=False)
                    except EdgefleetError as e:
                        log.warning("telemetry window %s is unreadable, left in place: %s", wid, e.message)
                        report["unreadable"] += 1
                        continue
                    rel = _release_of(w.tags, devices.get(dev_id))
                    key = (dev_id, rel, w.reference_id or "-", math.floor(w.start / res) * res)
                    groups.setdefault(key, []).append(w)
                    done.append(wid)
                for (dev_id, rel, ref, bucket), ws in groups.items():
                    row = s.scalars(
                        select(TelemetryRollup).where(
                            TelemetryRollup.device_id == dev_id,
                            TelemetryRollup.release == rel,
                            TelemetryRollup.reference_id == ref,
                            TelemetryRollup.resolution_s == res,
                            TelemetryRollup.bucket == bucket,
                        )
                    ).one_or_none()
                    parts = list(ws)
                    if row is not None:
                        parts.insert(
                            0, Window.from_dict(row.data, config=self._window_config, check_time=False)
                        )
                    m = merge_windows(parts, on_mismatch="drop")
                    n = len(ws) + (row.windows if row is not None else 0)
                    if row is None:
                        s.add(
                            TelemetryRollup(
                                device_id=dev_id,
                                release=rel,
                                reference_id=ref,
                                resolution_s=res,
                                bucket=bucket,
                                start=m.start,
                                end=m.end,
                                windows=n,
                                updated_at=now,
                                data=m.to_dict(),
                            )
                        )
                    else:
                        row.start, row.end, row.windows, row.updated_at, row.data = (
                            m.start,
                            m.end,
                            n,
                            now,
                            m.to_dict(),
                        )
                    report["rollups_written"] += 1
                if done:
                    s.execute(delete(TelemetryWindowRow).where(TelemetryWindowRow.id.in_(done)))
                report["rolled_up"] += len(done)
            if len(rows) < self.config.maintain_batch:
                break
        with self.db.write() as s:
            self.db.lock(s, "fleet-maintain")
            gone = s.execute(
                delete(TelemetryRollup).where(TelemetryRollup.end < now - self.config.rollup_retention_s)
            ).rowcount
            report["rollups_deleted"] = int(gone or 0)
            if report["rolled_up"] or report["rollups_deleted"]:
                _audit(
                    s,
                    "telemetry.maintained",
                    now,
                    **report,
                    message=f"{report['rolled_up']} raw windows rolled up, {report['rollups_deleted']} rollups expired",
                )
        if report["rolled_up"] or report["rollups_deleted"]:
            log.info("telemetry retention: %s", report)
        return report

    def drift_snapshot(self, s: Session) -> dict[str, Any] | None:
        row = s.get(ServerState, _DRIFT_STATE)
        return row.value if row is not None else None


def _alert_key(key: str) -> str:
    """Alert keys fit the column: long ones keep a readable head and a hash of the whole."""
    if len(key) <= 256:
        return key
    return key[:239] + "#" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return str(v)


def _alert_dict(a: FleetAlert) -> dict[str, Any]:
    return {
        "id": a.id,
        "key": a.key,
        "rule": a.rule,
        "severity": a.severity,
        "state": a.state,
        "message": a.message,
        "subject": a.subject,
        "value": a.value,
        "threshold": a.threshold,
        "first_at": a.first_at,
        "last_at": a.last_at,
        "resolved_at": a.resolved_at,
        "evaluations": a.evaluations,
        "evidence": a.evidence,
    }


def _request_dict(r: RetrainRequestRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "created_at": r.created_at,
        "model": r.model,
        "alert_key": r.alert_key,
        "reason": r.reason,
        "subject": r.subject,
        "evidence": r.evidence,
        "status": r.status,
        "decided_by": r.decided_by,
        "decided_at": r.decided_at,
        "fired_at": r.fired_at,
        "hook": r.hook,
        "error": r.error,
    }
