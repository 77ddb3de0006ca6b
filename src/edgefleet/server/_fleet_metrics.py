"""Prometheus figures of the fleet, read from the database at scrape time (so every replica agrees).

Registered on the app's own ``CollectorRegistry`` next to the control plane's process counters; served by
its ``/metrics`` endpoint. A scrape that cannot reach the database reports ``edgefleet_fleet_up 0``
instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from edgefleet.server._devices import device_status
from edgefleet.server._fleet import FleetView
from edgefleet.server._fleet_models import FleetAlert, RetrainRequestRow, TelemetryRollup
from edgefleet.server._models import Device, Release, Rollout, TelemetryBatchRow, TelemetryWindowRow
from edgefleet.server._rollout_reads import FINAL_STATES

__all__ = ["FleetCollector"]

log = logging.getLogger(__name__)

_GATE_STATUS = ("pass", "fail", "wait", "skipped")


def _up() -> GaugeMetricFamily:
    return GaugeMetricFamily("edgefleet_fleet_up", "1 when the fleet figures could be read from the database")


def _g(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class FleetCollector(Collector):
    """Devices, rollouts and wave gates, telemetry stored, drift scores and alerts, as gauges."""

    def __init__(self, view: FleetView) -> None:
        self.view = view

    def describe(self) -> list[Any]:
        # the families without values (no database read): registering them by name lets a scrape that
        # asks for other names only (``/metrics?name[]=...``) skip the fleet read altogether
        return [_up(), *self._families()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = _up()
        try:
            families = self._read()
        except Exception as e:  # noqa: BLE001 - a scrape must answer even when the database is down
            log.warning("fleet metrics unavailable: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> list[GaugeMetricFamily]:
        """Every fleet family, empty, in exposition order."""
        devices = _g(
            "edgefleet_fleet_devices",
            "enrolled devices by running release, class, region and status",
            ["release", "device_class", "region", "status"],
        )
        health = _g("edgefleet_fleet_devices_health", "devices by model health", ["health"])
        online = _g("edgefleet_fleet_devices_online", "devices heard from within the stale limit", [])
        rollouts = _g("edgefleet_fleet_rollouts", "rollouts by state", ["state"])
        wave = _g(
            "edgefleet_fleet_rollout_wave",
            "current wave (1-based) of live rollouts",
            ["rollout", "release", "state"],
        )
        gate_value = _g(
            "edgefleet_fleet_rollout_gate_value",
            "measured figure of a wave gate",
            ["rollout", "wave", "gate"],
        )
        gate_threshold = _g(
            "edgefleet_fleet_rollout_gate_threshold", "threshold of a wave gate", ["rollout", "wave", "gate"]
        )
        gate_status = _g(
            "edgefleet_fleet_rollout_gate_status",
            "1 for the gate's current status",
            ["rollout", "wave", "gate", "status"],
        )
        wave_devices = _g(
            "edgefleet_fleet_rollout_wave_devices",
            "devices of the current wave by step",
            ["rollout", "wave", "step"],
        )
        tel_batches = _g("edgefleet_fleet_telemetry_batches", "telemetry uploads accepted (stored)", [])
        tel_windows = _g("edgefleet_fleet_telemetry_windows", "telemetry windows stored", ["tier"])
        tel_recent = _g(
            "edgefleet_fleet_telemetry_windows_last_hour", "telemetry windows received in the last hour", []
        )
        drift = _g(
            "edgefleet_fleet_drift_score",
            "drift score per release, device class and region (last evaluation)",
            ["release", "device_class", "region"],
        )
        drifted = _g(
            "edgefleet_fleet_drifted",
            "1 when the group is drifted (last evaluation)",
            ["release", "device_class", "region"],
        )
        alerts = _g("edgefleet_fleet_alerts_open", "open alerts by rule and severity", ["rule", "severity"])
        retrain = _g("edgefleet_fleet_retrain_requests", "retraining requests by status", ["status"])

        return [
            devices,
            health,
            online,
            rollouts,
            wave,
            gate_value,
            gate_threshold,
            gate_status,
            wave_devices,
            tel_batches,
            tel_windows,
            tel_recent,
            drift,
            drifted,
            alerts,
            retrain,
        ]

    def _read(self) -> list[GaugeMetricFamily]:
        v = self.view
        cfg = v.ctx.config
        now = v.now()
        families = self._families()
        (devices, health, online, rollouts, wave, gate_value, gate_threshold, gate_status, wave_devices,
         tel_batches, tel_windows, tel_recent, drift, drifted, alerts, retrain) = families  # fmt: skip
        with v.db.read() as s:
            counts: dict[tuple[str, ...], int] = {}
            hcounts: dict[str, int] = {}
            n_online = 0
            for d in s.scalars(select(Device)):
                st = device_status(d, now, cfg.stale_after_s, cfg.offline_after_s)
                n_online += st == "online"
                rel = f"{d.active_name}@{d.active_version}" if d.active_version else "none"
                key = (rel, d.device_class, str((d.tags or {}).get("region", "-")), st)
                counts[key] = counts.get(key, 0) + 1
                h = v.dashboard.health_of(d, now)
                hcounts[h] = hcounts.get(h, 0) + 1
            for key, n in sorted(counts.items()):
                devices.add_metric(list(key), n)
            for h, n in sorted(hcounts.items()):
                health.add_metric([h], n)
            online.add_metric([], n_online)

            for state, n in s.execute(select(Rollout.state, func.count()).group_by(Rollout.state)):
                rollouts.add_metric([state], n)
            live = s.scalars(select(Rollout).where(Rollout.state.notin_(FINAL_STATES))).all()
            for r in live:
                rel = s.get(Release, r.release_id)
                rid, w = r.id, str(r.wave_index + 1)
                wave.add_metric([rid, f"{rel.name}@{rel.version}" if rel else "-", r.state], r.wave_index + 1)
                ev = r.evaluation or {}
                for g in ev.get("gates") or []:
                    name = str(g.get("name"))
                    if isinstance(g.get("value"), (int, float)):
                        gate_value.add_metric([rid, w, name], float(g["value"]))
                    if isinstance(g.get("threshold"), (int, float)):
                        gate_threshold.add_metric([rid, w, name], float(g["threshold"]))
                    for st in _GATE_STATUS:
                        gate_status.add_metric([rid, w, name, st], 1.0 if g.get("status") == st else 0.0)
                for step, n in (ev.get("counts") or {}).items():
                    if isinstance(n, (int, float)):
                        wave_devices.add_metric([rid, w, step], n)

            tel_batches.add_metric([], s.scalar(select(func.count()).select_from(TelemetryBatchRow)) or 0)
            tel_windows.add_metric(
                ["raw"], s.scalar(select(func.count()).select_from(TelemetryWindowRow)) or 0
            )
            tel_windows.add_metric(
                ["rollup"], s.scalar(select(func.coalesce(func.sum(TelemetryRollup.windows), 0))) or 0
            )
            tel_recent.add_metric(
                [],
                s.scalar(
                    select(func.count())
                    .select_from(TelemetryWindowRow)
                    .where(TelemetryWindowRow.received_at > now - 3600)
                )
                or 0,
            )
            snap = v.drift_snapshot(s) or {}
            for g in snap.get("groups") or []:
                labels = [
                    str(g.get("release", "-")),
                    str(g.get("device_class", "-")),
                    str(g.get("region", "-")),
                ]
                drift.add_metric(labels, float(g.get("score") or 0.0))
                drifted.add_metric(labels, 1.0 if g.get("drifted") else 0.0)
            for rule, sev, n in s.execute(
                select(FleetAlert.rule, FleetAlert.severity, func.count())
                .where(FleetAlert.state == "open")
                .group_by(FleetAlert.rule, FleetAlert.severity)
            ):
                alerts.add_metric([rule, sev], n)
            for status, n in s.execute(
                select(RetrainRequestRow.status, func.count()).group_by(RetrainRequestRow.status)
            ):
                retrain.add_metric([status], n)
        return families
