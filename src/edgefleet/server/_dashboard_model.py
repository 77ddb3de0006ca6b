"""The dashboard's read model: the fleet page's counts, the device table, rollout progress and events.

Every figure is read from the database when asked, so every server replica shows the same page. ``device_health``
(with ``_devices.device_status``) also labels the Prometheus figures (``_fleet_metrics``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from edgefleet.server._devices import device_status
from edgefleet.server._fleet_models import FleetAlert, RetrainRequestRow, TelemetryRollup
from edgefleet.server._fleetview import FleetQueries, OnQueries
from edgefleet.server._models import AuditEntry, Device, Rollout, TelemetryBatchRow, TelemetryWindowRow
from edgefleet.telemetry import AlertRules

__all__ = ["DashboardModel", "device_health"]


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


class DashboardModel(OnQueries):
    """What the dashboard pages read, over the fleet's queries (their config, rules and drift threshold)."""

    def __init__(self, queries: FleetQueries) -> None:
        self.queries = queries

    def health_of(self, d: Device, now: float) -> str:
        """``device_health`` with this server's offline limit, alert rules and drift threshold."""
        return device_health(
            d,
            now,
            offline_after_s=self.queries.ctx.config.offline_after_s,
            rules=self.rules,
            drift_threshold=self.drift_config.threshold,
        )

    def overview(self) -> dict[str, Any]:
        """Counts for the fleet page: devices by status, version, class, region, health and agent state."""
        now = self.now()
        cfg = self.queries.ctx.config
        by: dict[str, dict[str, int]] = {
            k: {} for k in ("status", "version", "class", "region", "health", "state")
        }

        def bump(kind: str, key: str) -> None:
            by[kind][key] = by[kind].get(key, 0) + 1

        with self.db.read() as s:
            devices = list(s.scalars(select(Device)))
            for d in devices:
                bump("status", device_status(d, now, cfg.stale_after_s, cfg.offline_after_s))
                if d.revoked:
                    continue
                bump("version", f"{d.active_name}@{d.active_version}" if d.active_version else "none")
                bump("class", d.device_class)
                bump("region", str((d.tags or {}).get("region", "-")))
                bump(
                    "health",
                    self.health_of(d, now),
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
        cfg = self.queries.ctx.config
        with self.db.read() as s:
            rows = list(s.scalars(select(Device).order_by(Device.enrolled_at, Device.id).limit(limit)))
            return [
                {
                    "id": d.id,
                    "name": d.name,
                    "class": d.device_class,
                    "region": (d.tags or {}).get("region", "-"),
                    "version": f"{d.active_name}@{d.active_version}" if d.active_version else None,
                    "status": device_status(d, now, cfg.stale_after_s, cfg.offline_after_s),
                    "health": self.health_of(d, now),
                    "state": d.state,
                    "last_seen_s_ago": round(now - d.last_seen, 1),
                    "power": _power(d.resources),
                }
                for d in rows
            ]

    def rollouts(self, *, limit: int = 10) -> list[dict[str, Any]]:
        """Recent rollouts with, per wave, its state and the gate figures that decided it."""
        return self.queries.ctx.engine.history(limit=limit)

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


def _power(resources: dict[str, Any] | None) -> str:
    """The device policy in one cell: rules on now and switches so far (edgefleet.power), then the energy
    per inference (``est.`` when estimated from CPU time, ``RAPL`` when measured); '-' if none."""
    r = resources or {}
    parts = []
    if r.get("power_switches") is not None:
        rules = ", ".join(str(x) for x in (r.get("power_rules") or [])[:8]) or "normal"
        parts.append(f"{rules} ({int(r['power_switches'])} switches)")
    if isinstance(r.get("energy_mj"), int | float):
        how = "RAPL" if r.get("energy_method") == "rapl" else "est."
        parts.append(f"{r['energy_mj']:.3g} mJ/inference ({how})")
    return "; ".join(parts) or "-"
