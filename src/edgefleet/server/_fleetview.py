"""Fleet telemetry queries: stored windows read back, tagged by the server, and merged exactly.

The control plane stores every accepted telemetry window (``telemetry_windows``; older ones rolled up per
hour into ``telemetry_rollups`` by ``_retention``). This module reads them back as
:class:`edgefleet.telemetry.Window` objects, with tags the *server* knows (device id, device class, region
from the device record, the release the window says it ran), and answers fleet questions by merging windows
exactly (``merge_windows``): per device, device class, region, release and time range; latency and
confidence over time; outliers among peers; drift against the bundles' reference statistics.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.errors import EdgefleetError, InputError
from edgefleet.server._fleet_config import FleetConfig
from edgefleet.server._fleet_models import TelemetryRollup
from edgefleet.server._models import Device, Release, ReleaseVariant, TelemetryWindowRow
from edgefleet.server._references import BundleReferences, VariantRef
from edgefleet.telemetry import (
    AlertRules,
    DriftConfig,
    Window,
    WindowConfig,
    detect_outliers,
    drift_by_group,
    merge_windows,
)

__all__ = [
    "ACTOR",
    "GROUP_KEYS",
    "FleetQueries",
    "Query",
    "release_of",
    "rounded",
    "split_release",
    "summarize",
]

log = logging.getLogger(__name__)

#: Tags a query may group or filter by (set by the server, not by the device).
GROUP_KEYS = ("device_id", "device_class", "region", "release")
_OUTLIER_METRICS = ("latency_p50_ms", "latency_p95_ms", "mean_confidence", "error_rate", "drift_score")
#: Who the audit log names for what the fleet view does by itself (alerts, retention, hooks).
ACTOR = "fleet"
_NICE_BUCKETS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


@dataclass(frozen=True)
class Query:
    """What a fleet query covers: a time range and optional filters on server-side tags."""

    since: float
    until: float
    device_id: str | None = None
    device_class: str | None = None
    region: str | None = None
    release: str | None = None


def release_of(tags: dict[str, str], device: Device | None) -> str:
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


def split_release(label: str) -> tuple[str, str] | None:
    """``name@version`` as ``(name, version)``, or None."""
    name, sep, version = label.partition("@")
    return (name, version) if sep and name and version else None


def rounded(x: float | None, nd: int = 4) -> float | None:
    """``x`` rounded to ``nd`` digits; None when missing or not finite (JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def summarize(w: Window) -> dict[str, Any]:
    """The figures of a (merged) window a dashboard needs."""
    res = {k: rounded(v[1] / v[0]) for k, v in w.resources.items() if v[0]}
    return {
        "start": w.start,
        "end": w.end,
        "windows": w.windows,
        "requests": w.requests,
        "rows": w.rows,
        "errors": w.errors,
        "error_rate": rounded(w.error_rate, 6),
        "latency_p50_ms": rounded(w.latency_quantile(0.5)),
        "latency_p95_ms": rounded(w.latency_quantile(0.95)),
        "latency_p99_ms": rounded(w.latency_quantile(0.99)),
        "mean_confidence": rounded(w.mean_confidence),
        "confidence_p05": rounded(w.confidence_quantile(0.05)),
        "classes": dict(w.classes),
        "events": dict(w.events),
        "resources_mean": res,
    }


class OnQueries:
    """A part of the fleet view working over the shared ``FleetQueries``: their settings, database, clock."""

    queries: FleetQueries

    @property
    def config(self) -> FleetConfig:
        return self.queries.config

    @property
    def rules(self) -> AlertRules:
        return self.queries.rules

    @property
    def drift_config(self) -> DriftConfig:
        return self.queries.drift_config

    @property
    def db(self) -> Any:
        return self.queries.db

    def now(self) -> float:
        return self.queries.now()


class FleetQueries:
    """Fleet telemetry queries over one control plane's database (thread-safe, one per app).

    Args:
        ctx: the server's ``ServerContext`` (database, config, clock, repository).
        config: fleet settings; replacing ``config`` later takes effect at the next query.
        rules: alert rules (default: from ``EDGEFLEET_ALERTS_*``; ``silent_after_s`` is replaced by
            ``silent_after_polls`` x the server's poll interval); outliers use their z and minimums.
        drift_config: drift thresholds (default: from ``EDGEFLEET_DRIFT_*``).
    """

    def __init__(
        self,
        ctx: Any,
        config: FleetConfig,
        *,
        rules: AlertRules | None = None,
        drift_config: DriftConfig | None = None,
    ) -> None:
        self.ctx = ctx
        self.config = config
        base = rules or AlertRules()
        self.rules = base.model_copy(
            update={"silent_after_s": self.config.silent_after_polls * ctx.config.poll_interval_s}
        )
        self.drift_config = drift_config or DriftConfig()
        self.references = BundleReferences(
            ctx.repo.targets_dir,
            size=self.config.reference_cache,
            max_bytes=self.config.max_reference_archive_bytes,
        )
        self.window_config = WindowConfig()  # built once: settings objects read the environment
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

    def clear_cache(self) -> None:
        """Forget the parsed windows (the next query decodes what it reads)."""
        with self._cache_lock:
            self._cache.clear()

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
            w = Window.from_dict(data, config=self.window_config, check_time=False)
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
            "release": release or release_of(w.tags, d),
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
                        "latency_p50_ms": rounded(m.latency_quantile(0.5)),
                        "latency_p95_ms": rounded(m.latency_quantile(0.95)),
                        "mean_confidence": rounded(m.mean_confidence),
                        "confidence_p05": rounded(m.confidence_quantile(0.05)),
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

    def keep_outlier(self, metric: str, value: float, median: float, robust_z: float, z: float) -> bool:
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
            if not self.keep_outlier(o.metric, o.value, o.median, o.robust_z, z):
                continue
            w = per[o.device_id]
            out.append(
                {
                    "device_id": o.device_id,
                    "group": dict(zip(group_by, o.group, strict=True)),
                    "metric": o.metric,
                    "value": rounded(o.value),
                    "median": rounded(o.median),
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

    def _release_refs(self, s: Session, label: str) -> tuple[list[VariantRef], str | None]:
        nv = split_release(label)
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
            out.append(VariantRef(v.variant, tuple(v.device_classes or ()), ref, err))
        if not any(x.reference for x in out):
            return out, "; ".join(x.error for x in out if x.error) or f"{label} has no reference statistics"
        return out, None

    def drift_reports(
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
        results, skipped, facts = self.drift_reports(q, by)
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
                            "psi": rounded(t.psi),
                            "p_adjusted": rounded(t.p_adjusted, 8),
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
    def _pick_ref(w: Window, usable: list[VariantRef]) -> int:
        if w.reference_id is not None:
            for i, v in enumerate(usable):
                if v.reference.id == w.reference_id:
                    return i
        for i, v in enumerate(usable):
            if w.tags["device_class"] in v.device_classes:
                return i
        return 0
