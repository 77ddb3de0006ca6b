"""The one home of a device's running health counters (the ``h_*`` columns of ``devices``).

While a device runs one build (``h_key``, its sha256), every heartbeat adds its ``ModelHealth`` to the
counters; they restart when the reported build changes. Writers: the heartbeat's single UPDATE (its SET
clauses come from :meth:`DeviceHealth.set_sql`, its parameters from :meth:`DeviceHealth.beat_params`)
and enrollment (:data:`DeviceHealth.ZERO`). Readers: the operator API's ``health_totals``
(:meth:`DeviceHealth.to_dict`) and the rollout gates' ``Aggregate`` (:meth:`DeviceHealth.totals`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.protocol import Heartbeat
from edgefleet.server._models import Device

__all__ = ["DeviceHealth", "HealthTotals"]


@dataclass(frozen=True)
class HealthTotals:
    """One device's counters for the build it reports (weighted sums: a mean is ``sum / weight``)."""

    key: str | None
    since: float | None
    requests: int
    errors: int
    lat_sum: float
    lat_w: float
    conf_sum: float
    conf_w: float
    golden: bool | None
    shadow: float | None
    drift: float | None

    @property
    def latency_p95_ms(self) -> float | None:
        return self.lat_sum / self.lat_w if self.lat_w else None

    @property
    def mean_confidence(self) -> float | None:
        return self.conf_sum / self.conf_w if self.conf_w else None


class DeviceHealth:
    """Reads and writes of the ``h_*`` columns; one per process (its SQL is built for the database's dialect)."""

    # A new device has counted nothing yet.
    ZERO: dict[str, Any] = {
        "h_requests": 0,
        "h_errors": 0,
        "h_lat_sum": 0.0,
        "h_lat_w": 0.0,
        "h_conf_sum": 0.0,
        "h_conf_w": 0.0,
    }
    # The SQL type of each parameter of beat_params (PostgreSQL needs parameters used twice typed).
    PARAM_TYPES: dict[str, str] = {
        "lat": "double precision",
        "lat_w": "double precision",
        "conf": "double precision",
        "conf_w": "double precision",
        "shadow": "double precision",
        "drift": "double precision",
        "req": "bigint",
        "err": "bigint",
        "golden_set": "boolean",
        "golden": "boolean",
        "shadow_set": "boolean",
        "drift_set": "boolean",
    }

    # --- reads ---------------------------------------------------------------------------------

    @staticmethod
    def totals(d: Device) -> HealthTotals:
        return HealthTotals(
            key=d.h_key,
            since=d.h_since,
            requests=d.h_requests or 0,
            errors=d.h_errors or 0,
            lat_sum=d.h_lat_sum or 0.0,
            lat_w=d.h_lat_w or 0.0,
            conf_sum=d.h_conf_sum or 0.0,
            conf_w=d.h_conf_w or 0.0,
            golden=d.h_golden,
            shadow=d.h_shadow,
            drift=d.h_drift,
        )

    @staticmethod
    def to_dict(d: Device) -> dict[str, Any]:
        """The operator API's ``health_totals`` of a device."""
        t = DeviceHealth.totals(d)
        return {
            "since": t.since,
            "requests": d.h_requests,
            "errors": d.h_errors,
            "latency_p95_ms": t.latency_p95_ms,
            "mean_confidence": t.mean_confidence,
            "golden_pass": t.golden,
            "shadow_agreement": t.shadow,
            "drift_score": t.drift,
        }

    # --- the heartbeat's write -----------------------------------------------------------------

    @staticmethod
    def beat_params(hb: Heartbeat) -> dict[str, Any]:
        """The parameters :meth:`set_sql` reads, from one heartbeat (nothing counts without an active build)."""
        a, h = hb.active, hb.health
        key = a.sha256[:64] if a is not None else None
        req = max(0, h.requests) if key else 0
        lat_w = float(max(req, 1)) if (key and h.latency_p95_ms is not None) else 0.0
        conf_w = float(max(req, 1)) if (key and h.mean_confidence is not None) else 0.0
        return {
            "key": key,
            "req": req,
            "err": max(0, min(h.errors, h.requests)) if key else 0,
            "lat": (h.latency_p95_ms or 0.0) * lat_w,
            "lat_w": lat_w,
            "conf": (h.mean_confidence or 0.0) * conf_w,
            "conf_w": conf_w,
            "golden_set": bool(key and h.golden_pass is not None),
            "golden": bool(h.golden_pass),
            "shadow_set": bool(key and h.shadow_agreement is not None),
            "shadow": float(h.shadow_agreement or 0.0),
            "drift_set": bool(key and h.drift_score is not None),
            "drift": float(h.drift_score or 0.0),
        }

    @staticmethod
    def set_sql(p: Callable[[str], str]) -> str:
        """The SET clauses of the heartbeat's UPDATE for the ``h_*`` columns (``p(name)``: a parameter).

        On the right of SET every column is the row's value before the update, so the counters restart
        exactly when the reported build (``h_key``) changes. ``now`` is the statement's time parameter.
        """
        same = f"h_key = {p('key')}"
        return f"""h_key = {p("key")},
          h_since = CASE WHEN {same} THEN h_since ELSE {p("now")} END,
          h_requests = CASE WHEN {same} THEN h_requests + {p("req")} ELSE {p("req")} END,
          h_errors = CASE WHEN {same} THEN h_errors + {p("err")} ELSE {p("err")} END,
          h_lat_sum = CASE WHEN {same} THEN h_lat_sum + {p("lat")} ELSE {p("lat")} END,
          h_lat_w = CASE WHEN {same} THEN h_lat_w + {p("lat_w")} ELSE {p("lat_w")} END,
          h_conf_sum = CASE WHEN {same} THEN h_conf_sum + {p("conf")} ELSE {p("conf")} END,
          h_conf_w = CASE WHEN {same} THEN h_conf_w + {p("conf_w")} ELSE {p("conf_w")} END,
          h_golden = CASE WHEN {p("golden_set")} THEN {p("golden")} WHEN {same} THEN h_golden ELSE NULL END,
          h_shadow = CASE WHEN {p("shadow_set")} THEN {p("shadow")} WHEN {same} THEN h_shadow ELSE NULL END,
          h_drift = CASE WHEN {p("drift_set")} THEN {p("drift")} WHEN {same} THEN h_drift ELSE NULL END"""
