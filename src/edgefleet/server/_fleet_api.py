"""HTTP surface of fleet observability: ``/v1/fleet/...`` JSON for operators, ``/dashboard``, ``/metrics`` figures.

``install_fleet(app, ctx)`` wires everything into a control-plane app: the router, the Prometheus collector on
the app's registry, and (when the server runs its background work) a thread that evaluates alerts and
applies retention. Every JSON endpoint needs an operator token; the viewer role reads, approving
retraining and forcing maintenance need admin.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import FileResponse, Response

from edgefleet.errors import InputError, NotFoundError
from edgefleet.server._auth import Operator, Role
from edgefleet.server._fleet import FleetView
from edgefleet.server._fleet_config import FleetConfig
from edgefleet.server._fleet_metrics import FleetCollector
from edgefleet.server._http import operator
from edgefleet.server._scheduler import Scheduler

__all__ = ["DASHBOARD_DIR", "fleet_router", "fleet_view", "install_fleet"]

log = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
# The page loads only its own script and style, and talks only to this server.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' data:; "
    "connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": desc}
    for code, desc in (
        (400, "bad query"),
        (401, "no or unknown token"),
        (403, "role too low or device token"),
        (404, "not found"),
        (409, "conflict"),
    )
}


Viewer = Annotated[Operator, Depends(operator(Role.viewer, fleet=True))]
Deployer = Annotated[Operator, Depends(operator(Role.deployer, fleet=True))]
Admin = Annotated[Operator, Depends(operator(Role.admin, fleet=True))]

Since = Annotated[float | None, Query(description="UNIX seconds (default: until - range_s)")]
Until = Annotated[float | None, Query(description="UNIX seconds (default: now)")]
RangeS = Annotated[float | None, Query(gt=0, description="length of the range when since is not given")]
Name = Annotated[str | None, Query(max_length=160)]


def _background(view: FleetView) -> Scheduler:
    """Alert evaluation and retention on their intervals, in a thread of the leading server process."""
    cfg = view.config
    s = Scheduler("edgefleet-fleet", leader=view.db.leader)  # one process of several runs it
    # first run after one full interval: a freshly started server has nothing to judge yet
    s.every(cfg.alert_interval_s, "alert evaluation", view.evaluate, first_after_s=cfg.alert_interval_s)
    s.every(
        cfg.maintain_interval_s, "telemetry retention", view.maintain, first_after_s=cfg.maintain_interval_s
    )
    return s


def fleet_router(view: FleetView, *, background: bool = False) -> APIRouter:
    """The ``/v1/fleet`` and ``/dashboard`` routes over ``view`` (with its background loop if asked)."""

    @asynccontextmanager
    async def lifespan(_app: Any):  # noqa: ANN202
        loop = _background(view) if background else None
        if loop:
            loop.start()
        try:
            yield
        finally:
            if loop:
                loop.close()

    r = APIRouter(lifespan=lifespan)
    T = ["fleet"]

    def q(since: float | None, until: float | None, range_s: float | None, **kw: Any):  # noqa: ANN202
        return view.query(since=since, until=until, range_s=range_s, **kw)

    @r.get(
        "/v1/fleet/overview",
        tags=T,
        responses=_ERRORS,
        summary="Devices by status, version, class, region, health",
    )
    def overview(_: Viewer) -> dict[str, Any]:
        return view.overview()

    @r.get("/v1/fleet/devices", tags=T, responses=_ERRORS, summary="Compact device table with health")
    def devices(_: Viewer, limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> list[dict[str, Any]]:
        return view.devices(limit=limit)

    @r.get(
        "/v1/fleet/telemetry",
        tags=T,
        responses=_ERRORS,
        summary="Telemetry windows merged per device / class / region / release over a time range",
    )
    def telemetry(
        _: Viewer,
        by: Annotated[str, Query(max_length=200, description="comma-separated group keys")] = "release",
        since: Since = None,
        until: Until = None,
        range_s: RangeS = None,
        device_id: Name = None,
        device_class: Name = None,
        region: Name = None,
        release: Name = None,
    ) -> dict[str, Any]:
        keys = view.parse_by(by, ("release",))
        return view.merged(
            q(
                since,
                until,
                range_s,
                device_id=device_id,
                device_class=device_class,
                region=region,
                release=release,
            ),
            keys,
        )

    @r.get(
        "/v1/fleet/telemetry/window",
        tags=T,
        responses=_ERRORS,
        summary="Every matching window merged into one (Window.to_dict form)",
    )
    def telemetry_window(
        _: Viewer,
        since: Since = None,
        until: Until = None,
        range_s: RangeS = None,
        device_id: Name = None,
        device_class: Name = None,
        region: Name = None,
        release: Name = None,
    ) -> dict[str, Any]:
        return view.window(
            q(
                since,
                until,
                range_s,
                device_id=device_id,
                device_class=device_class,
                region=region,
                release=release,
            )
        )

    @r.get(
        "/v1/fleet/timeseries",
        tags=T,
        responses=_ERRORS,
        summary="Latency and confidence over time per group",
    )
    def timeseries(
        _: Viewer,
        by: Annotated[str, Query(max_length=200)] = "release",
        bucket_s: Annotated[int | None, Query(ge=1)] = None,
        since: Since = None,
        until: Until = None,
        range_s: RangeS = None,
        device_class: Name = None,
        region: Name = None,
        release: Name = None,
    ) -> dict[str, Any]:
        return view.timeseries(
            q(since, until, range_s, device_class=device_class, region=region, release=release),
            view.parse_by(by, ("release",)),
            bucket_s,
        )

    @r.get(
        "/v1/fleet/outliers",
        tags=T,
        responses=_ERRORS,
        summary="Devices far from their class (robust z-score)",
    )
    def outliers(
        _: Viewer,
        group_by: Annotated[str, Query(max_length=200)] = "device_class",
        metrics: Annotated[str, Query(max_length=200)] = "latency_p95_ms,mean_confidence,error_rate",
        z: Annotated[float | None, Query(gt=0)] = None,
        min_devices: Annotated[int | None, Query(ge=2)] = None,
        since: Since = None,
        until: Until = None,
        range_s: RangeS = None,
        release: Name = None,
    ) -> dict[str, Any]:
        return view.outliers(
            q(since, until, range_s, release=release),
            group_by=view.parse_by(group_by, ("device_class",)),
            metrics=[m.strip() for m in metrics.split(",") if m.strip()],
            z=z,
            min_devices=min_devices,
        )

    @r.get(
        "/v1/fleet/drift",
        tags=T,
        responses=_ERRORS,
        summary="Drift per release and group (class, region) against the bundle's reference statistics",
    )
    def drift(
        _: Viewer,
        by: Annotated[str, Query(max_length=200)] = "device_class,region",
        since: Since = None,
        until: Until = None,
        range_s: RangeS = None,
        device_class: Name = None,
        region: Name = None,
        release: Name = None,
    ) -> dict[str, Any]:
        keys = view.parse_by(by, ("device_class", "region"))
        return view.drift(
            q(since, until, range_s, device_class=device_class, region=region, release=release), keys
        )

    @r.get(
        "/v1/fleet/rollouts", tags=T, responses=_ERRORS, summary="Rollout progress with gate figures per wave"
    )
    def rollouts(_: Viewer, limit: Annotated[int, Query(ge=1, le=100)] = 10) -> list[dict[str, Any]]:
        return view.rollouts(limit=limit)

    @r.get("/v1/fleet/events", tags=T, responses=_ERRORS, summary="Recent events (audit log), newest first")
    def events(
        _: Viewer,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        prefix: Annotated[str | None, Query(max_length=64, description="e.g. alert. or rollout.")] = None,
        before_id: Annotated[int | None, Query(ge=1)] = None,
    ) -> list[dict[str, Any]]:
        return view.events(limit=limit, prefix=prefix, before_id=before_id)

    @r.get("/v1/fleet/alerts", tags=T, responses=_ERRORS, summary="Alerts (open by default)")
    def alerts(
        _: Viewer,
        state: Literal["open", "resolved", "all"] = "open",
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        return view.alerts(state=None if state == "all" else state, limit=limit)

    @r.post("/v1/fleet/alerts/evaluate", tags=T, responses=_ERRORS, summary="Evaluate the alert rules now")
    def evaluate(_: Deployer) -> dict[str, Any]:
        return view.evaluate()

    @r.get("/v1/fleet/retrain-requests", tags=T, responses=_ERRORS, summary="Retraining requests")
    def retrain_requests(
        _: Viewer,
        status: Literal["pending", "approved", "rejected", "fired", "failed"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return view.retrain_requests(status=status, limit=limit)

    @r.post(
        "/v1/fleet/retrain-requests/{request_id}/{action}",
        tags=T,
        responses=_ERRORS,
        summary="Approve (runs the retraining hook) or reject a pending request",
    )
    def retrain_decide(
        request_id: Annotated[str, Depends(_request_id)], action: Literal["approve", "reject"], me: Admin
    ) -> dict[str, Any]:
        return (
            view.approve(request_id, me.actor) if action == "approve" else view.reject(request_id, me.actor)
        )

    @r.post(
        "/v1/fleet/maintenance",
        tags=T,
        responses=_ERRORS,
        summary="Apply telemetry retention and downsampling now",
    )
    def maintenance(_: Admin) -> dict[str, Any]:
        return view.maintain()

    # --- dashboard (static; the page fetches the JSON above with the operator's token) -------------

    def page() -> FileResponse:
        return FileResponse(
            DASHBOARD_DIR / "index.html",
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": _CSP,
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    r.add_api_route("/dashboard", page, methods=["GET"], include_in_schema=False)
    r.add_api_route("/dashboard/", page, methods=["GET"], include_in_schema=False)

    @r.get("/dashboard/assets/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        media = _ASSETS.get(name)
        if media is None:
            raise NotFoundError(f"no dashboard asset {name!r}", hint="open /dashboard")
        return FileResponse(
            DASHBOARD_DIR / name,
            media_type=media,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return r


def _request_id(request_id: str) -> str:
    if not (1 <= len(request_id) <= 32 and request_id.isalnum()):
        raise InputError(
            f"{request_id[:40]!r} is not a retraining request id",
            hint="list them: GET /v1/fleet/retrain-requests",
        )
    return request_id


def install_fleet(
    app: FastAPI, ctx: Any, config: FleetConfig | None = None, *, background: bool | None = None
) -> FleetView:
    """Add fleet queries, the dashboard and fleet metrics to a control-plane app; returns the view.

    Args:
        background: run the alert/retention loop (default: the server's ``engine_enabled``); it runs only
            when ``FleetConfig.background`` is on too.
    """
    view = FleetView(ctx, config)
    app.state.fleet = view
    server_bg = bool(getattr(ctx.config, "engine_enabled", False)) if background is None else background
    app.include_router(fleet_router(view, background=view.config.background and server_bg))
    registry = getattr(getattr(ctx, "metrics", None), "registry", None)
    if registry is not None:
        registry.register(FleetCollector(view))
    return view


def fleet_view(app: FastAPI) -> FleetView:
    """The :class:`FleetView` installed on ``app``."""
    return app.state.fleet
