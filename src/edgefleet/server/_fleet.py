"""The fleet view: one object per app over fleet queries, alerts and retraining, retention and the dashboard.

``FleetView`` is what the HTTP surface (``_fleet_api``), the background loop and the Prometheus collector
hold. It builds the parts on one shared :class:`FleetQueries` (so a replaced ``config`` reaches all of them)
and answers each call from the part that owns it:

- ``_fleetview.FleetQueries``: telemetry queries and merges, outliers, drift;
- ``_alerts.FleetAlerts``: alert rules, alert state, retraining requests and their hook;
- ``_retention.Retention``: raw windows rolled up per hour, rollups expired;
- ``_dashboard_model.DashboardModel``: overview counts, the device table, rollout progress, events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from edgefleet.server._alerts import FleetAlerts
from edgefleet.server._dashboard_model import DashboardModel
from edgefleet.server._fleet_config import FleetConfig
from edgefleet.server._fleetview import FleetQueries, OnQueries, Query
from edgefleet.server._retention import Retention
from edgefleet.telemetry import AlertRules, DriftConfig

__all__ = ["FleetView"]


class FleetView(OnQueries):
    """Fleet queries, alerting, retention and the dashboard over one control plane's database (one per app).

    Args:
        ctx: the server's ``ServerContext`` (database, config, clock, repository, rollout engine).
        config: fleet settings (default: from ``EDGEFLEET_FLEET_*``).
        rules: alert rules (default: from ``EDGEFLEET_ALERTS_*``; ``silent_after_s`` is replaced by
            ``silent_after_polls`` x the server's poll interval).
        drift_config: drift thresholds (default: from ``EDGEFLEET_DRIFT_*``).

    Raises:
        ConfigError: both a retraining webhook and a retraining command are configured.
    """

    def __init__(
        self,
        ctx: Any,
        config: FleetConfig | None = None,
        *,
        rules: AlertRules | None = None,
        drift_config: DriftConfig | None = None,
    ) -> None:
        self.queries = FleetQueries(ctx, config or FleetConfig(), rules=rules, drift_config=drift_config)
        self.alerting = FleetAlerts(self.queries)
        self.retention = Retention(self.queries)
        self.dashboard = DashboardModel(self.queries)

    # --- shared state (held by the queries) ------------------------------------------------------

    @property
    def ctx(self) -> Any:
        return self.queries.ctx

    @property
    def config(self) -> FleetConfig:
        return self.queries.config

    @config.setter
    def config(self, value: FleetConfig) -> None:
        self.queries.config = value

    # --- queries ---------------------------------------------------------------------------------

    def query(self, **kw: Any) -> Query:
        return self.queries.query(**kw)

    parse_by = staticmethod(FleetQueries.parse_by)

    def merged(self, q: Query, by: Sequence[str]) -> dict[str, Any]:
        return self.queries.merged(q, by)

    def window(self, q: Query) -> dict[str, Any]:
        return self.queries.window(q)

    def timeseries(
        self, q: Query, by: Sequence[str] = ("release",), bucket_s: int | None = None
    ) -> dict[str, Any]:
        return self.queries.timeseries(q, by, bucket_s)

    def outliers(self, q: Query, **kw: Any) -> dict[str, Any]:
        return self.queries.outliers(q, **kw)

    def drift(self, q: Query, by: Sequence[str] = ("device_class", "region")) -> dict[str, Any]:
        return self.queries.drift(q, by)

    # --- dashboard -------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        return self.dashboard.overview()

    def devices(self, *, limit: int = 200) -> list[dict[str, Any]]:
        return self.dashboard.devices(limit=limit)

    def rollouts(self, *, limit: int = 10) -> list[dict[str, Any]]:
        return self.dashboard.rollouts(limit=limit)

    def events(
        self, *, limit: int = 50, prefix: str | None = None, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        return self.dashboard.events(limit=limit, prefix=prefix, before_id=before_id)

    # --- alerts and retraining -------------------------------------------------------------------

    def alerts(self, *, state: str | None = "open", limit: int = 200) -> list[dict[str, Any]]:
        return self.alerting.alerts(state=state, limit=limit)

    def evaluate(self, now: float | None = None) -> dict[str, Any]:
        return self.alerting.evaluate(now)

    def drift_snapshot(self, s: Session) -> dict[str, Any] | None:
        return self.alerting.drift_snapshot(s)

    def retrain_requests(self, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self.alerting.retrain_requests(status=status, limit=limit)

    def approve(self, request_id: str, actor: str) -> dict[str, Any]:
        return self.alerting.approve(request_id, actor)

    def reject(self, request_id: str, actor: str) -> dict[str, Any]:
        return self.alerting.reject(request_id, actor)

    # --- retention -------------------------------------------------------------------------------

    def maintain(self, now: float | None = None) -> dict[str, Any]:
        return self.retention.maintain(now)
