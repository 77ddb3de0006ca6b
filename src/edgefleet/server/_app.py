"""The control plane's HTTP API (FastAPI; OpenAPI at /docs): routes over the services of this package.

A route parses its request, calls one service and shapes the answer; the services hold the SQL and the
rules: ``DeviceService`` (the devices' own calls), ``DeviceRegistry`` (operators' device records),
``TokenService``, ``RepositoryService`` (TUF files and releases), ``RolloutEngine``, ``AuditLog`` and,
under ``/v1/fleet``, the fleet view. The heartbeat's fast path lives in ``_heartbeat``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.routing import Route

from edgefleet.errors import ConflictError, ValidationError
from edgefleet.protocol import (
    EnrollRequest,
    EnrollResponse,
    ErrorBody,
    Heartbeat,
    HeartbeatResponse,
    RenewRequest,
    RenewResponse,
    TelemetryBatch,
)
from edgefleet.server._audit import AuditLog
from edgefleet.server._auth import OPERATOR_PREFIX, Operator, Role
from edgefleet.server._blobs import BlobStore, make_blob_store
from edgefleet.server._config import ServerConfig
from edgefleet.server._db import Database
from edgefleet.server._device_policies import install_device_policies
from edgefleet.server._devices import DeviceRegistry
from edgefleet.server._director import DeviceService
from edgefleet.server._fl_jobs import install_fl_jobs
from edgefleet.server._fleet_api import install_fleet
from edgefleet.server._heartbeat import enroll_endpoint, heartbeat_endpoint, json_response
from edgefleet.server._http import (
    ERRORS,
    Bearer,
    BodyLimit,
    DeviceCred,
    authenticate,
    install_error_handlers,
    operator,
    token_of,
)
from edgefleet.server._identity import ServerIdentity, prepare_data_dir
from edgefleet.server._notify import Notifier, make_notifier
from edgefleet.server._observability import install_observability, register_process_metrics
from edgefleet.server._retrain_jobs import install_retrain
from edgefleet.server._rollouts import RolloutEngine
from edgefleet.server._samples_api import install_samples
from edgefleet.server._scheduler import Scheduler
from edgefleet.server._schemas import (
    DevicePatch,
    EnrollmentTokenCreate,
    OperatorTokenCreate,
    ReleaseRegister,
    RolloutAction,
    RolloutCreate,
)
from edgefleet.server._tokens import TokenService
from edgefleet.server._tufrepo import RepositoryService
from edgefleet.server._update_policies_api import install_update_policies
from edgefleet.tls import peer_cert_der

__all__ = ["create_app", "ServerContext", "app_from_env"]

log = logging.getLogger(__name__)


DeviceId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


Viewer = Annotated[Operator, Depends(operator(Role.viewer))]
Deployer = Annotated[Operator, Depends(operator(Role.deployer))]
Admin = Annotated[Operator, Depends(operator(Role.admin))]
Id = Annotated[str, Path(max_length=64)]


@dataclass
class ServerContext:
    """The services one server process runs, shared by every request."""

    config: ServerConfig
    db: Database
    blobs: BlobStore
    notifier: Notifier
    engine: RolloutEngine
    devices: DeviceService
    registry: DeviceRegistry
    tokens: TokenService
    audit: AuditLog
    repo: RepositoryService
    clock: Callable[[], float]
    metrics: Any


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        # auto_describe: the process collector (which has no describe) is indexed by its names at
        # registration, so a scrape filtered with name[] finds it; every other collector describes itself
        self.registry = CollectorRegistry(auto_describe=True)
        self.heartbeats = Counter("edgefleet_heartbeats", "heartbeats accepted", registry=self.registry)
        self.enrollments = Counter("edgefleet_enrollments", "devices enrolled", registry=self.registry)
        self.telemetry = Counter(
            "edgefleet_telemetry_batches", "telemetry batches accepted", registry=self.registry
        )
        self.errors = Counter("edgefleet_http_errors", "error responses", ["code"], registry=self.registry)
        self.request_duration = register_process_metrics(self.registry)


# --- construction ------------------------------------------------------------------------------


def create_app(
    config: ServerConfig | None = None,
    *,
    clock: Callable[[], float] | None = None,
    notifier: Notifier | None = None,
    background: bool | None = None,
    tracer_provider: Any = None,
) -> FastAPI:
    """Build the control-plane app: migrate the database, bootstrap an admin token, wire the services.

    Args:
        config: settings (default: from the environment, ``EDGEFLEET_SERVER_*``).
        clock: time source for tests (UNIX seconds).
        notifier: nudge transport (default: MQTT when ``config.mqtt_url`` is set, else none).
        background: run the rollout engine / timestamp refresh thread (default ``config.engine_enabled``).
        tracer_provider: trace requests into this OpenTelemetry provider (default: the one configured
            by ``OTEL_TRACES_EXPORTER``, else no tracing).

    Raises:
        SchemaVersionError: the database was written by a newer edgefleet.
        ConfigError: the database URL is unusable.
    """
    cfg = config or ServerConfig()
    prepare_data_dir(cfg)
    clock = clock or time.time
    db = Database(
        cfg.database_url,
        pool_size=cfg.db_pool_size,
        connect_timeout_s=cfg.db_connect_timeout_s,
        busy_timeout_ms=cfg.sqlite_busy_timeout_ms,
    )
    db.upgrade()
    tokens = TokenService(db, cfg, clock=clock)
    tokens.bootstrap_admin()
    notifier = notifier or make_notifier(
        cfg.mqtt_url,
        prefix=cfg.mqtt_topic_prefix,
        max_queue=cfg.mqtt_max_queue,
        rate_per_s=cfg.nudge_rate_per_s,
        max_spread_s=cfg.poll_interval_s,
    )
    repo = RepositoryService(cfg.repo_path, cfg.keys_path, refresh_margin_s=cfg.timestamp_refresh_margin_s)
    blobs = make_blob_store(cfg)
    identity = ServerIdentity(cfg)
    devices = DeviceService(
        db, cfg, blobs, clock=clock, root_json=lambda: repo.root_json_path, identity=identity
    )
    ctx = ServerContext(
        config=cfg,
        db=db,
        blobs=blobs,
        notifier=notifier,
        engine=RolloutEngine(db, notifier=notifier, clock=clock),
        devices=devices,
        registry=DeviceRegistry(db, cfg, notifier, clock=clock, assignment=devices.assignment),
        tokens=tokens,
        audit=AuditLog(db),
        repo=repo,
        clock=clock,
        metrics=_Metrics(),
    )
    run_bg = cfg.engine_enabled if background is None else background

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        bg = _background(ctx) if run_bg else None
        if bg:
            bg.start()
        try:
            yield
        finally:
            if bg:
                bg.close()
            ctx.notifier.close()
            ctx.devices.close()  # heartbeats still queued are written first
            ctx.db.dispose()

    app = FastAPIOffline(  # Swagger UI and ReDoc served from the package: /docs works air-gapped
        title="edgefleet control plane",
        version="1",
        description="Fleet registry, director (assignments), gated rollouts and the TUF image repository.",
        lifespan=lifespan,
        # FastAPI's own telemetry off (a per-request check costs CPU); OpenTelemetry request spans are
        # opt-in through install_observability (OTEL_TRACES_EXPORTER or tracer_provider).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ctx = ctx
    install_error_handlers(app, lambda status: ctx.metrics.errors.labels(str(status)).inc())
    _device_routes(app, ctx)
    _repository_routes(app, ctx)
    _operator_routes(app, ctx)
    install_fleet(app, ctx, background=run_bg)  # /v1/fleet, /dashboard, fleet figures in /metrics
    install_retrain(app, ctx)  # retraining jobs, their rollout proposals, release lineage (issue 13)
    install_samples(app, ctx)  # samples, feedback, sample policies, live accuracy (issue 13)
    install_update_policies(app, ctx)  # maintenance windows, pins, deferral per device group (issue 15)
    install_device_policies(app, ctx)  # power/thermal policies pushed per device group (issue 15)
    install_fl_jobs(app, ctx)  # federated jobs, named to their devices in heartbeat answers (issue 14)
    app.add_middleware(BodyLimit, default=cfg.max_body_bytes, telemetry=cfg.max_telemetry_bytes)
    install_observability(app, ctx.metrics.request_duration, tracer_provider)  # outermost: times all
    return app


def _background(ctx: ServerContext) -> Scheduler:
    """The rollout engine's ticks and the timestamp refresh, in a thread of the leading server process."""
    cfg = ctx.config
    s = Scheduler("edgefleet-engine", leader=ctx.db.leader)  # one process of several runs it
    s.every(cfg.engine_tick_s, "rollout engine tick", ctx.engine.tick)
    s.every(cfg.timestamp_check_s, "timestamp refresh", lambda: ctx.repo.refresh_if_due(ctx.db))
    return s


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory edgefleet.server:app_from_env`` (settings from EDGEFLEET_SERVER_*)."""
    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"))
    return create_app(ServerConfig())


# --- device-facing routes ------------------------------------------------------------------------


def _device_routes(app: FastAPI, ctx: ServerContext) -> None:
    @app.post(
        "/v1/enroll",
        response_model=EnrollResponse,
        tags=["device"],
        responses=ERRORS,
        summary="Exchange a one-time enrollment token for a device id and token",
    )
    def enroll(req: EnrollRequest, request: Request) -> EnrollResponse:
        # Documents the endpoint; requests are served by the fast path below (same checks, same answers).
        out = ctx.devices.enroll(req, repository_url=str(request.base_url) + "repository/")
        ctx.metrics.enrollments.inc()
        return out

    fast_enroll = enroll_endpoint(ctx, ctx.metrics.enrollments.inc)
    app.router.routes.insert(0, Route("/v1/enroll", fast_enroll, methods=["POST"]))

    @app.post(
        "/v1/devices/{device_id}/heartbeat",
        response_model=HeartbeatResponse,
        tags=["device"],
        responses=ERRORS,
        summary="Report status; get the director's assignment, poll interval and commands",
    )
    async def heartbeat(device_id: DeviceId, hb: Heartbeat, cred: DeviceCred) -> Response:
        # Documents the endpoint; requests are served by the fast path (same checks, same answers).
        out = ctx.devices.heartbeat(device_id, cred, hb)
        ctx.metrics.heartbeats.inc()
        return json_response(out)

    fast = heartbeat_endpoint(ctx, ctx.metrics.heartbeats.inc)
    app.router.routes.insert(0, Route("/v1/devices/{device_id}/heartbeat", fast, methods=["POST"]))

    @app.post(
        "/v1/devices/{device_id}/telemetry",
        tags=["device"],
        responses=ERRORS,
        summary="Upload aggregated telemetry windows (idempotent on batch_id)",
    )
    def telemetry(device_id: DeviceId, batch: TelemetryBatch, cred: DeviceCred) -> dict[str, Any]:
        out = ctx.devices.telemetry(device_id, cred, batch)
        ctx.metrics.telemetry.inc()
        return out

    @app.post(
        "/v1/devices/{device_id}/certificate",
        response_model=RenewResponse,
        tags=["device"],
        responses=ERRORS,
        summary="Renew the device's client certificate for a new key (authenticated as that device)",
    )
    def renew_certificate(device_id: DeviceId, req: RenewRequest, cred: DeviceCred) -> RenewResponse:
        return ctx.devices.renew(device_id, cred, req)

    @app.get(
        "/v1/devices/{device_id}",
        tags=["device"],
        responses=ERRORS,
        summary="One device's record (the device itself, or an operator with viewer role)",
    )
    def get_device(device_id: DeviceId, cred: Bearer, request: Request) -> dict[str, Any]:
        _device_or_viewer(ctx, device_id, cred, request)
        return ctx.registry.get(device_id)

    @app.get(
        "/v1/devices/{device_id}/telemetry",
        tags=["device"],
        responses=ERRORS,
        summary="Stored telemetry windows of a device, newest first",
    )
    def get_telemetry(
        device_id: DeviceId,
        cred: Bearer,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        since: Annotated[float | None, Query()] = None,
        request: Request = None,  # type: ignore[assignment]
    ) -> list[dict[str, Any]]:
        _device_or_viewer(ctx, device_id, cred, request)
        return ctx.devices.windows(device_id, limit=limit, since=since)


def _device_or_viewer(ctx: ServerContext, device_id: str, cred: Any, request: Request) -> None:
    token = cred.credentials if cred is not None else None
    if token is not None and token.startswith(OPERATOR_PREFIX):
        authenticate(ctx.db, token_of(cred), Role.viewer)
        return
    ctx.devices.authenticate(
        device_id, ctx.devices.credential(device_id, token, peer_cert_der(request.scope))
    )


# --- repository --------------------------------------------------------------------------------


def _repository_routes(app: FastAPI, ctx: ServerContext) -> None:
    def serve(kind: str, path: str, request: Request) -> Response:
        p = ctx.repo.file(kind, path)
        st = p.stat()
        headers = {
            "Cache-Control": "no-cache" if kind == "metadata" else "public, max-age=31536000, immutable"
        }
        resp = FileResponse(
            p, stat_result=st, headers=headers, media_type=None if kind == "metadata" else "application/x-tar"
        )
        if kind == "metadata":
            resp.headers["content-type"] = "application/json"
        etag = resp.headers.get("etag")
        inm = request.headers.get("if-none-match")
        if etag and inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return Response(status_code=304, headers={"ETag": etag, **headers})
        return resp

    def metadata(path: str, request: Request) -> Response:
        return serve("metadata", path, request)

    def targets(path: str, request: Request) -> Response:
        return serve("targets", path, request)

    for kind, route in (("metadata", metadata), ("targets", targets)):
        for method in ("GET", "HEAD"):  # one route each: a shared one gives both the same operation id
            app.add_api_route(
                f"/repository/{kind}/{{path:path}}",
                route,
                methods=[method],
                tags=["repository"],
                responses={404: {"model": ErrorBody}},
                summary=f"TUF {kind} file (HTTP Range and ETag supported)",
                name=f"repository_{kind}_{method.lower()}",
            )


# --- operator routes ---------------------------------------------------------------------------

T = ["operator"]


def _operator_routes(app: FastAPI, ctx: ServerContext) -> None:
    cfg = ctx.config

    @app.get("/healthz", tags=T, summary="Liveness and database reachability (no auth)")
    def healthz() -> dict[str, Any]:
        ctx.db.ping()
        return {
            "ok": True,
            "db": ctx.db.dialect,
            "mqtt": ctx.notifier.connected,
            "repository": ctx.repo.exists,
            "leader": ctx.db.leader.leading,  # this process runs the periodic jobs
        }

    @app.get("/metrics", tags=T, responses=ERRORS, summary="Prometheus metrics")
    def metrics(
        _: Viewer,
        names: Annotated[
            list[str] | None,
            Query(
                alias="name[]",
                description="only these metric names (Prometheus' own filter); the fleet figures, "
                "which read the database, are read only when one of theirs is asked for",
            ),
        ] = None,
    ) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry = ctx.metrics.registry
        if names:
            if len(names) > 64 or any(len(n) > 200 for n in names):
                raise ValidationError(
                    "name[] takes at most 64 metric names of at most 200 characters",
                    hint="ask for fewer names, or none for every metric",
                )
            registry = registry.restricted_registry(names)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/whoami", tags=T, responses=ERRORS)
    def whoami(me: Viewer) -> dict[str, Any]:
        return {"name": me.name, "role": me.role.name, "token_id": me.token_id}

    @app.get("/v1/audit", tags=T, responses=ERRORS)
    def audit_log(
        _: Viewer,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
        action: Annotated[str | None, Query(max_length=64)] = None,
        since_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> list[dict[str, Any]]:
        return ctx.audit.entries(since_id=since_id, action=action, limit=min(limit, cfg.page_limit))

    _token_routes(app, ctx)
    _registry_routes(app, ctx)
    _release_routes(app, ctx)
    _rollout_routes(app, ctx)


def _token_routes(app: FastAPI, ctx: ServerContext) -> None:
    @app.post("/v1/operator-tokens", tags=T, responses=ERRORS, status_code=201)
    def create_op_token(body: OperatorTokenCreate, me: Admin) -> dict[str, Any]:
        return ctx.tokens.create_operator(name=body.name, role=body.role, actor=me.actor)

    @app.get("/v1/operator-tokens", tags=T, responses=ERRORS)
    def list_op_tokens(_: Admin) -> list[dict[str, Any]]:
        return ctx.tokens.list_operators()

    @app.delete("/v1/operator-tokens/{token_id}", tags=T, responses=ERRORS)
    def revoke_op_token(token_id: Id, me: Admin) -> dict[str, Any]:
        return ctx.tokens.revoke_operator(token_id, actor=me.actor)

    @app.post("/v1/enrollment-tokens", tags=T, responses=ERRORS, status_code=201)
    def create_enroll_token(body: EnrollmentTokenCreate, me: Admin) -> dict[str, Any]:
        return ctx.tokens.create_enrollment(tags=body.tags, expires_in_s=body.expires_in_s, actor=me.actor)

    @app.get("/v1/enrollment-tokens", tags=T, responses=ERRORS)
    def list_enroll_tokens(_: Admin) -> list[dict[str, Any]]:
        return ctx.tokens.list_enrollment()

    @app.delete("/v1/enrollment-tokens/{token_id}", tags=T, responses=ERRORS)
    def revoke_enroll_token(token_id: Id, me: Admin) -> dict[str, Any]:
        return ctx.tokens.revoke_enrollment(token_id, actor=me.actor)


def _registry_routes(app: FastAPI, ctx: ServerContext) -> None:
    @app.get("/v1/devices", tags=T, responses=ERRORS)
    def list_devices(
        _: Viewer,
        selector: Annotated[str | None, Query(max_length=1024)] = None,
        status: Annotated[Literal["pending", "online", "stale", "offline", "revoked"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> dict[str, Any]:
        return ctx.registry.list(selector=selector, status=status, limit=limit, offset=offset)

    @app.patch("/v1/devices/{device_id}", tags=T, responses=ERRORS)
    def patch_device(device_id: DeviceId, body: DevicePatch, me: Deployer) -> dict[str, Any]:
        return ctx.registry.patch(device_id, body, actor=me.actor)

    @app.post("/v1/devices/{device_id}/revoke", tags=T, responses=ERRORS)
    def revoke_device(device_id: DeviceId, me: Admin) -> dict[str, Any]:
        return ctx.registry.revoke(device_id, actor=me.actor)

    @app.post("/v1/devices/{device_id}/nudge", tags=T, responses=ERRORS)
    def nudge_device(device_id: DeviceId, _: Deployer) -> dict[str, Any]:
        return ctx.registry.nudge(device_id)


def _release_routes(app: FastAPI, ctx: ServerContext) -> None:
    @app.post("/v1/releases", tags=T, responses=ERRORS)
    def register_release(body: ReleaseRegister, me: Deployer, response: Response) -> dict[str, Any]:
        out, created = ctx.repo.register(ctx.db, body, actor=me.actor, now=ctx.clock())
        response.status_code = 201 if created else 200
        return out

    @app.get("/v1/releases", tags=T, responses=ERRORS)
    def list_releases(
        _: Viewer, name: Annotated[str | None, Query(max_length=64)] = None
    ) -> list[dict[str, Any]]:
        return ctx.repo.releases(ctx.db, name=name)

    @app.get("/v1/releases/{name}/{version}", tags=T, responses=ERRORS)
    def get_release(name: Id, version: Id, _: Viewer) -> dict[str, Any]:
        return ctx.repo.release(ctx.db, name, version)

    @app.get("/v1/repository", tags=T, responses=ERRORS, summary="Repository status (role versions, expiry)")
    def repository_status(_: Viewer) -> dict[str, Any]:
        return ctx.repo.status()

    @app.post("/v1/repository/refresh", tags=T, responses=ERRORS, summary="Re-sign timestamp.json now")
    def repository_refresh(_: Admin) -> dict[str, Any]:
        if not ctx.repo.can_refresh():
            raise ConflictError(
                "this server holds no timestamp key", hint="start it with --keys DIR holding the online keys"
            )
        res = ctx.repo.refresh_if_due(ctx.db, force=True)
        return {"refreshed": res is not None, "result": res}


def _rollout_routes(app: FastAPI, ctx: ServerContext) -> None:
    @app.post("/v1/rollouts", tags=T, responses=ERRORS, status_code=201)
    def create_rollout(body: RolloutCreate, me: Deployer) -> dict[str, Any]:
        return ctx.engine.create(body, actor=me.actor)

    @app.get("/v1/rollouts", tags=T, responses=ERRORS)
    def list_rollouts(
        _: Viewer,
        state: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return ctx.engine.list(state=state, limit=limit)

    @app.get("/v1/rollouts/{rollout_id}", tags=T, responses=ERRORS)
    def get_rollout(rollout_id: Id, _: Viewer) -> dict[str, Any]:
        return ctx.engine.describe(rollout_id)

    @app.get("/v1/rollouts/{rollout_id}/audit", tags=T, responses=ERRORS)
    def rollout_audit(rollout_id: Id, _: Viewer) -> list[dict[str, Any]]:
        return ctx.audit.of_rollout(rollout_id, limit=ctx.config.page_limit)

    @app.post("/v1/rollouts/{rollout_id}/{action}", tags=T, responses=ERRORS)
    def rollout_action(
        rollout_id: Id,
        action: Literal["pause", "resume", "abort", "rollback", "approve"],
        me: Deployer,
        body: RolloutAction | None = None,
    ) -> dict[str, Any]:
        return ctx.engine.act(rollout_id, action, actor=me.actor, reason=body.reason if body else None)
