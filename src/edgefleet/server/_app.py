"""The control plane's HTTP API (FastAPI; OpenAPI at /docs) over the services of this package."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from edgefleet.errors import (
    AuthError,
    ConflictError,
    EdgefleetError,
    InputError,
    NotFoundError,
    ValidationError,
)
from edgefleet.protocol import (
    EnrollRequest,
    EnrollResponse,
    ErrorBody,
    Heartbeat,
    HeartbeatResponse,
    TelemetryBatch,
)
from edgefleet.server._auth import (
    DEVICE_PREFIX,
    OPERATOR_PREFIX,
    Operator,
    Role,
    authenticate_operator,
    create_enrollment_token,
    create_operator_token,
    revoke_operator_token,
)
from edgefleet.server._blobs import BlobStore, FileBlobStore
from edgefleet.server._config import ServerConfig
from edgefleet.server._db import Database, is_db_unavailable
from edgefleet.server._director import DeviceService
from edgefleet.server._fleet_api import install_fleet
from edgefleet.server._models import AuditEntry, Device, EnrollmentToken, OperatorToken, Release, Rollout
from edgefleet.server._notify import Notifier, make_notifier
from edgefleet.server._rollouts import RolloutEngine, audit
from edgefleet.server._schemas import (
    DevicePatch,
    EnrollmentTokenCreate,
    OperatorTokenCreate,
    ReleaseRegister,
    RolloutAction,
    RolloutCreate,
)
from edgefleet.server._selector import Selector, device_attrs
from edgefleet.server._tufrepo import RepositoryService, release_dict

__all__ = ["create_app", "ServerContext", "app_from_env"]

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="device token (efd_...) or operator token (efo_...)")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _device_token(cred: Bearer) -> str:
    """The bearer token, refused before the body is even validated when it is missing or no device token."""
    token = _token(cred)
    if not token.startswith(DEVICE_PREFIX):
        raise AuthError("a device token (efd_...) is required here", hint="send the device's own token")
    return token


DeviceToken = Annotated[str, Depends(_device_token)]
DeviceId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 503)
}


@dataclass
class ServerContext:
    """The services one server process runs, shared by every request."""

    config: ServerConfig
    db: Database
    blobs: BlobStore
    notifier: Notifier
    engine: RolloutEngine
    devices: DeviceService
    repo: RepositoryService
    clock: Callable[[], float]
    metrics: Any


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()
        self.heartbeats = Counter("edgefleet_heartbeats", "heartbeats accepted", registry=self.registry)
        self.enrollments = Counter("edgefleet_enrollments", "devices enrolled", registry=self.registry)
        self.telemetry = Counter(
            "edgefleet_telemetry_batches", "telemetry batches accepted", registry=self.registry
        )
        self.errors = Counter("edgefleet_http_errors", "error responses", ["code"], registry=self.registry)


_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # \u0000 that is not itself an escaped backslash


class _BodyLimit:
    """Reads each request body up to its limit before the app sees it, and refuses bad ones early.

    Too large (by Content-Length or by what arrives): 413. A NUL character anywhere in the body,
    query or path: 422, because PostgreSQL cannot store it in text or JSON and a device or operator
    never needs one.
    """

    def __init__(self, app: Any, *, default: int, telemetry: int) -> None:
        self.app = app
        self.default = default
        self.telemetry = telemetry

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            await _send_json(send, 422, _nul_body("the URL"))
            return
        limit = self.telemetry if scope["path"].endswith("/telemetry") else self.default
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n < 0:
                    body = {
                        "error": "invalid_input",
                        "message": "Content-Length is not a number",
                        "hint": "send a valid Content-Length header",
                    }
                    await _send_json(send, 400, body)
                    return
                if n > limit:
                    await _send_json(send, 413, _too_large(limit))
                    return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, seen = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                await self.app(scope, _replay([msg], receive), send)  # the client went away
                return
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await _send_json(send, 413, _too_large(limit))
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        if b"\\u0000" in body and _NUL_ESCAPE.search(body):
            await _send_json(send, 422, _nul_body("the body"))
            return
        await self.app(
            scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send
        )


def _replay(messages: list[dict[str, Any]], receive: Any) -> Any:
    pending = list(messages)

    async def replay() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def _nul_body(where: str) -> dict[str, Any]:
    return {
        "error": "validation",
        "message": f"{where} contains a NUL character (\\u0000)",
        "hint": "remove it; no field accepts NUL characters",
    }


def _too_large(limit: int) -> dict[str, Any]:
    return {
        "error": "payload_too_large",
        "message": f"request body is larger than the {limit} bytes allowed",
        "hint": "send smaller batches (the limit is a server setting)",
        "details": {"limit": limit},
    }


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


class _Background:
    """Runs the rollout engine and the timestamp refresh in a thread of each server process."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="edgefleet-engine", daemon=True)
        self._next_ts = 0.0

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        cfg = self.ctx.config
        while not self.stop.is_set():
            try:
                self.ctx.engine.tick()
            except Exception as e:
                _log_background("rollout engine tick", e)
            if time.monotonic() >= self._next_ts:
                self._next_ts = time.monotonic() + cfg.timestamp_check_s
                try:
                    self.ctx.repo.refresh_if_due(self.ctx.db)
                except Exception as e:
                    _log_background("timestamp refresh", e)
            self.stop.wait(cfg.engine_tick_s)


_last_warned: dict[str, float] = {}


def _log_background(what: str, e: Exception) -> None:
    if is_db_unavailable(e):
        # once per 10 s: an outage must be visible in the log, not flood it
        now = time.monotonic()
        if now - _last_warned.get(what, -1e9) >= 10:
            _last_warned[what] = now
            log.warning("%s: database unavailable (%s); retrying every tick", what, type(e).__name__)
    else:
        log.exception("%s failed; retrying at the next tick", what)


# --- construction ------------------------------------------------------------------------------


def create_app(
    config: ServerConfig | None = None,
    *,
    clock: Callable[[], float] | None = None,
    notifier: Notifier | None = None,
    background: bool | None = None,
) -> FastAPI:
    """Build the control-plane app: migrate the database, bootstrap an admin token, wire the services.

    Args:
        config: settings (default: from the environment, ``EDGEFLEET_SERVER_*``).
        clock: time source for tests (UNIX seconds).
        notifier: nudge transport (default: MQTT when ``config.mqtt_url`` is set, else none).
        background: run the rollout engine / timestamp refresh thread (default ``config.engine_enabled``).

    Raises:
        SchemaVersionError: the database was written by a newer edgefleet.
        ConfigError: the database URL is unusable.
    """
    cfg = config or ServerConfig()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    clock = clock or time.time
    db = Database(
        cfg.database_url,
        pool_size=cfg.db_pool_size,
        connect_timeout_s=cfg.db_connect_timeout_s,
        busy_timeout_ms=cfg.sqlite_busy_timeout_ms,
    )
    db.upgrade()
    _bootstrap_admin(db, cfg, clock())
    notifier = notifier or make_notifier(
        cfg.mqtt_url, prefix=cfg.mqtt_topic_prefix, max_queue=cfg.mqtt_max_queue
    )
    repo = RepositoryService(cfg.repo_path, cfg.keys_path, refresh_margin_s=cfg.timestamp_refresh_margin_s)
    blobs = FileBlobStore(cfg.blob_path)
    ctx = ServerContext(
        config=cfg,
        db=db,
        blobs=blobs,
        notifier=notifier,
        engine=RolloutEngine(db, notifier=notifier, clock=clock),
        devices=DeviceService(db, cfg, blobs, clock=clock, root_json=lambda: repo.root_json_path),
        repo=repo,
        clock=clock,
        metrics=_Metrics(),
    )
    run_bg = cfg.engine_enabled if background is None else background

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        bg = _Background(ctx) if run_bg else None
        if bg:
            bg.start()
        try:
            yield
        finally:
            if bg:
                bg.close()
            ctx.notifier.close()
            ctx.db.dispose()

    app = FastAPI(
        title="edgefleet control plane",
        version="1",
        description="Fleet registry, director (assignments), gated rollouts and the TUF image repository.",
        lifespan=lifespan,
        # No OpenTelemetry: /metrics is the server's telemetry, and the per-request check costs CPU.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ctx = ctx
    _errors(app, ctx)
    _device_routes(app, ctx)
    _repository_routes(app, ctx)
    _operator_routes(app, ctx)
    install_fleet(app, ctx, background=run_bg)  # /v1/fleet, /dashboard, fleet figures in /metrics
    app.add_middleware(_BodyLimit, default=cfg.max_body_bytes, telemetry=cfg.max_telemetry_bytes)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory edgefleet.server:app_from_env`` (settings from EDGEFLEET_SERVER_*)."""
    logging.basicConfig(level=os.environ.get("EDGEFLEET_LOG_LEVEL", "WARNING"))
    return create_app(ServerConfig())


def _bootstrap_admin(db: Database, cfg: ServerConfig, now: float) -> None:
    if not cfg.bootstrap_admin:
        return
    with db.write() as s:
        db.lock(s, "bootstrap")
        has_admin = s.scalar(
            select(func.count())
            .select_from(OperatorToken)
            .where(OperatorToken.role == "admin", OperatorToken.revoked_at.is_(None))
        )
        if has_admin:
            return
        _, token = create_operator_token(s, name="admin", role=Role.admin, created_by="bootstrap", now=now)
        path = cfg.admin_token_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
        audit(s, "token.created", actor="bootstrap", now=now, name="admin", role="admin", file=str(path))
        log.warning("created the first admin token in %s (mode 0600)", path)


# --- errors ------------------------------------------------------------------------------------


def _errors(app: FastAPI, ctx: ServerContext) -> None:
    def reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
        ctx.metrics.errors.labels(str(status)).inc()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(EdgefleetError)
    async def _edgefleet(_req: Request, e: EdgefleetError) -> JSONResponse:
        return reply(e.status_code, e.to_dict())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        problems = []
        for err in errs[:20]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"{loc}: {err.get('msg', 'invalid')}")
        body = {
            "error": "validation",
            "message": "request is invalid: " + "; ".join(problems),
            "hint": "fix the listed fields (the schema is at /docs)",
            "details": {
                "errors": [
                    {"loc": [str(p) for p in x.get("loc", ())], "msg": str(x.get("msg"))} for x in errs[:20]
                ]
            },
        }
        return reply(422, body)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 413:
            try:
                return reply(413, json.loads(e.detail))
            except (TypeError, ValueError):
                pass
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            e.status_code, "http_error"
        )
        hint = "see the API at /docs" if e.status_code in (404, 405) else None
        body = {"error": code, "message": str(e.detail)}
        if hint:
            body["hint"] = hint
        return reply(e.status_code, body, getattr(e, "headers", None))

    @app.exception_handler(DBAPIError)
    async def _db(_req: Request, e: DBAPIError) -> JSONResponse:
        if is_db_unavailable(e):
            log.warning("database unavailable: %s", type(e.orig).__name__ if e.orig else e)
            return reply(
                503,
                {
                    "error": "database_unavailable",
                    "message": "the database is not reachable right now",
                    "hint": "retry in a few seconds",
                },
                {"Retry-After": "2"},
            )
        log.exception("database error")
        return reply(
            500, {"error": "internal", "message": "internal database error", "hint": "see the server log"}
        )

    @app.exception_handler(Exception)
    async def _crash(_req: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return reply(
            500,
            {
                "error": "internal",
                "message": f"internal error ({type(e).__name__})",
                "hint": "see the server log",
            },
        )


# --- auth helpers ------------------------------------------------------------------------------


def _token(cred: HTTPAuthorizationCredentials | None) -> str:
    if cred is None or not cred.credentials:
        raise AuthError(
            "missing or malformed Authorization header", hint="send 'Authorization: Bearer <token>'"
        )
    if len(cred.credentials) > 512:
        raise AuthError("the bearer token is too long to be valid", hint="check the token you send")
    return cred.credentials


def _operator(ctx: ServerContext, cred: HTTPAuthorizationCredentials | None, role: Role) -> Operator:
    token = _token(cred)
    with ctx.db.read() as s:
        op = authenticate_operator(s, token)
    op.require(role)
    return op


def _status(last_seen: float, now: float, cfg: ServerConfig) -> str:
    age = now - last_seen
    if age >= cfg.offline_after_s:
        return "offline"
    if age >= cfg.stale_after_s:
        return "stale"
    return "online"


def _device_dict(
    d: Device, now: float, cfg: ServerConfig, assigned: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "class": d.device_class,
        "arch": d.arch,
        "tags": d.tags,
        "status": "revoked" if d.revoked else _status(d.last_seen, now, cfg),
        "last_seen": d.last_seen,
        "last_seen_s_ago": round(now - d.last_seen, 1),
        "enrolled_at": d.enrolled_at,
        "active": None
        if d.active_version is None
        else {
            "name": d.active_name,
            "version": d.active_version,
            "variant": d.active_variant,
            "target_path": d.active_target,
            "sha256": d.active_sha256,
        },
        "state": d.state,
        "progress": d.progress,
        "last_error": d.last_error,
        "health": d.health,
        "health_totals": {
            "since": d.h_since,
            "requests": d.h_requests,
            "errors": d.h_errors,
            "latency_p95_ms": (d.h_lat_sum / d.h_lat_w) if d.h_lat_w else None,
            "mean_confidence": (d.h_conf_sum / d.h_conf_w) if d.h_conf_w else None,
            "golden_pass": d.h_golden,
            "shadow_agreement": d.h_shadow,
            "drift_score": d.h_drift,
        },
        "resources": d.resources,
        "hardware": d.hardware,
        "assigned": assigned,
        "command": d.command,
        "last_failure": None
        if d.fail_version is None
        else {"build": d.fail_version, "at": d.fail_at, "reason": d.fail_reason},
    }


# --- device-facing routes ------------------------------------------------------------------------


def _device_routes(app: FastAPI, ctx: ServerContext) -> None:
    @app.post(
        "/v1/enroll",
        response_model=EnrollResponse,
        tags=["device"],
        responses=_ERRORS,
        summary="Exchange a one-time enrollment token for a device id and token",
    )
    def enroll(req: EnrollRequest, request: Request) -> EnrollResponse:
        out = ctx.devices.enroll(req, repository_url=str(request.base_url) + "repository/")
        ctx.metrics.enrollments.inc()
        return out

    @app.post(
        "/v1/devices/{device_id}/heartbeat",
        response_model=HeartbeatResponse,
        tags=["device"],
        responses=_ERRORS,
        summary="Report status; get the director's assignment, poll interval and commands",
    )
    async def heartbeat(device_id: DeviceId, hb: Heartbeat, token: DeviceToken) -> Response:
        # Documents the endpoint; requests are served by _fast_heartbeat (same checks, same answers).
        out = ctx.devices.heartbeat(device_id, token, hb)
        ctx.metrics.heartbeats.inc()
        return Response(json.dumps(out, separators=(",", ":")).encode(), media_type="application/json")

    app.router.routes.insert(
        0, Route("/v1/devices/{device_id}/heartbeat", _fast_heartbeat(ctx), methods=["POST"])
    )

    @app.post(
        "/v1/devices/{device_id}/telemetry",
        tags=["device"],
        responses=_ERRORS,
        summary="Upload aggregated telemetry windows (idempotent on batch_id)",
    )
    def telemetry(device_id: DeviceId, batch: TelemetryBatch, token: DeviceToken) -> dict[str, Any]:
        out = ctx.devices.telemetry(device_id, token, batch)
        ctx.metrics.telemetry.inc()
        return out

    @app.get(
        "/v1/devices/{device_id}",
        tags=["device"],
        responses=_ERRORS,
        summary="One device's record (the device itself, or an operator with viewer role)",
    )
    def get_device(device_id: DeviceId, cred: Bearer) -> dict[str, Any]:
        _device_or_viewer(ctx, device_id, cred)
        now = ctx.clock()
        with ctx.db.read() as s:
            d = s.get(Device, device_id)
            if d is None:
                raise NotFoundError(
                    f"unknown device {device_id!r}", hint="list devices with: edgefleet devices list"
                )
            assigned = None
            if d.assigned_variant_id is not None:
                assigned = ctx.devices._assignment(d.assigned_variant_id, d.assigned_rollout_id)
            return _device_dict(d, now, ctx.config, assigned)

    @app.get(
        "/v1/devices/{device_id}/telemetry",
        tags=["device"],
        responses=_ERRORS,
        summary="Stored telemetry windows of a device, newest first",
    )
    def get_telemetry(
        device_id: DeviceId,
        cred: Bearer,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        since: Annotated[float | None, Query()] = None,
    ) -> list[dict[str, Any]]:
        _device_or_viewer(ctx, device_id, cred)
        return ctx.devices.windows(device_id, limit=limit, since=since)


def _device_or_viewer(ctx: ServerContext, device_id: str, cred: HTTPAuthorizationCredentials | None) -> None:
    token = _token(cred)
    if token.startswith(OPERATOR_PREFIX):
        _operator(ctx, cred, Role.viewer)
    else:
        ctx.devices.authenticate(device_id, token)


_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _invalid(errors: list[dict[str, Any]], where: str) -> ValidationError:
    """The 422 body FastAPI's validation would produce, for checks made outside FastAPI."""
    problems, details = [], []
    for err in errors[:20]:
        loc = [where, *(str(p) for p in err.get("loc", ()))]
        problems.append(f"{'.'.join(loc)}: {err.get('msg', 'invalid')}")
        details.append({"loc": loc, "msg": str(err.get("msg"))})
    return ValidationError(
        "request is invalid: " + "; ".join(problems),
        hint="fix the listed fields (the schema is at /docs)",
        errors=details,
    )


def _fast_heartbeat(ctx: ServerContext) -> Callable[[Request], Any]:
    """The heartbeat endpoint without FastAPI's dependency machinery (the fleet's hot path).

    It makes the same checks in the same order as the documented route (credentials before the
    body) and answers with the same bodies. On SQLite the statement runs on the event loop (it is
    local CPU work under one write lock; a hop to the thread pool would cost more than the query);
    on PostgreSQL it runs in the thread pool, so that the waits for the database overlap.
    """
    inline = ctx.db.dialect == "sqlite"

    async def endpoint(request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not _DEVICE_ID_RE.match(device_id):
            raise _invalid(
                [{"loc": ["device_id"], "msg": "String should match pattern '^[A-Za-z0-9_.\\-]+$'"}], "path"
            )
        scheme, _, cred = (request.headers.get("authorization") or "").partition(" ")
        cred = cred.strip()
        if scheme.lower() != "bearer" or not cred:
            raise AuthError(
                "missing or malformed Authorization header", hint="send 'Authorization: Bearer <token>'"
            )
        if len(cred) > 512:
            raise AuthError("the bearer token is too long to be valid", hint="check the token you send")
        if not cred.startswith(DEVICE_PREFIX):
            raise AuthError("a device token (efd_...) is required here", hint="send the device's own token")
        body = await request.body()
        try:
            hb = Heartbeat.model_validate_json(body)
        except PydanticValidationError as e:
            raise _invalid(e.errors(include_url=False), "body") from None
        if inline:
            out = ctx.devices.heartbeat(device_id, cred, hb)
        else:
            out = await run_in_threadpool(ctx.devices.heartbeat, device_id, cred, hb)
        ctx.metrics.heartbeats.inc()
        return Response(json.dumps(out, separators=(",", ":")).encode(), media_type="application/json")

    return endpoint


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


def _viewer(request: Request, cred: Bearer) -> Operator:
    return _operator(request.app.state.ctx, cred, Role.viewer)


def _deployer(request: Request, cred: Bearer) -> Operator:
    return _operator(request.app.state.ctx, cred, Role.deployer)


def _admin(request: Request, cred: Bearer) -> Operator:
    return _operator(request.app.state.ctx, cred, Role.admin)


Viewer = Annotated[Operator, Depends(_viewer)]
Deployer = Annotated[Operator, Depends(_deployer)]
Admin = Annotated[Operator, Depends(_admin)]


def _operator_routes(app: FastAPI, ctx: ServerContext) -> None:
    cfg = ctx.config

    T = ["operator"]

    @app.get("/healthz", tags=["operator"], summary="Liveness and database reachability (no auth)")
    def healthz() -> dict[str, Any]:
        with ctx.db.read() as s:
            s.execute(select(1))
        return {
            "ok": True,
            "db": ctx.db.dialect,
            "mqtt": ctx.notifier.connected,
            "repository": ctx.repo.exists,
        }

    @app.get("/metrics", tags=T, responses=_ERRORS, summary="Prometheus metrics")
    def metrics(_: Viewer) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/whoami", tags=T, responses=_ERRORS)
    def whoami(me: Viewer) -> dict[str, Any]:
        return {"name": me.name, "role": me.role.name, "token_id": me.token_id}

    # tokens
    @app.post("/v1/operator-tokens", tags=T, responses=_ERRORS, status_code=201)
    def create_op_token(body: OperatorTokenCreate, me: Admin) -> dict[str, Any]:
        now = ctx.clock()
        with ctx.db.write() as s:
            row, token = create_operator_token(
                s, name=body.name, role=Role[body.role], created_by=me.actor, now=now
            )
            audit(
                s, "token.created", actor=me.actor, now=now, token_id=row.id, name=body.name, role=body.role
            )
        return {"id": row.id, "name": row.name, "role": row.role, "token": token}

    @app.get("/v1/operator-tokens", tags=T, responses=_ERRORS)
    def list_op_tokens(_: Admin) -> list[dict[str, Any]]:
        with ctx.db.read() as s:
            return [
                {
                    "id": t.id,
                    "name": t.name,
                    "role": t.role,
                    "created_at": t.created_at,
                    "revoked_at": t.revoked_at,
                }
                for t in s.scalars(select(OperatorToken).order_by(OperatorToken.created_at))
            ]

    @app.delete("/v1/operator-tokens/{token_id}", tags=T, responses=_ERRORS)
    def revoke_op_token(token_id: Annotated[str, Path(max_length=64)], me: Admin) -> dict[str, Any]:
        now = ctx.clock()
        with ctx.db.write() as s:
            row = revoke_operator_token(s, token_id, now)
            audit(s, "token.revoked", actor=me.actor, now=now, token_id=row.id, name=row.name)
        return {"id": row.id, "revoked_at": row.revoked_at}

    @app.post("/v1/enrollment-tokens", tags=T, responses=_ERRORS, status_code=201)
    def create_enroll_token(body: EnrollmentTokenCreate, me: Admin) -> dict[str, Any]:
        ttl = body.expires_in_s or cfg.enrollment_token_ttl_s
        if ttl > cfg.enrollment_token_max_ttl_s:
            raise InputError(
                f"expires_in_s {ttl:g} is above the {cfg.enrollment_token_max_ttl_s:g}s allowed",
                hint="create tokens shortly before the devices enroll",
            )
        now = ctx.clock()
        with ctx.db.write() as s:
            row, token = create_enrollment_token(s, tags=body.tags, ttl_s=ttl, created_by=me.actor, now=now)
            audit(
                s,
                "enrollment_token.created",
                actor=me.actor,
                now=now,
                token_id=row.id,
                tags=body.tags,
                expires_at=row.expires_at,
            )
        return {"id": row.id, "token": token, "tags": row.tags, "expires_at": row.expires_at}

    @app.get("/v1/enrollment-tokens", tags=T, responses=_ERRORS)
    def list_enroll_tokens(_: Admin) -> list[dict[str, Any]]:
        now = ctx.clock()
        with ctx.db.read() as s:
            return [
                {
                    "id": t.id,
                    "tags": t.tags,
                    "created_at": t.created_at,
                    "expires_at": t.expires_at,
                    "used_at": t.used_at,
                    "used_by": t.used_by,
                    "revoked": t.revoked,
                    "usable": not t.revoked and t.used_at is None and t.expires_at > now,
                }
                for t in s.scalars(select(EnrollmentToken).order_by(EnrollmentToken.created_at))
            ]

    @app.delete("/v1/enrollment-tokens/{token_id}", tags=T, responses=_ERRORS)
    def revoke_enroll_token(token_id: Annotated[str, Path(max_length=64)], me: Admin) -> dict[str, Any]:
        now = ctx.clock()
        with ctx.db.write() as s:
            t = s.get(EnrollmentToken, token_id)
            if t is None:
                raise NotFoundError(
                    f"no enrollment token {token_id!r}", hint="list them: edgefleet devices tokens list"
                )
            t.revoked = True
            audit(s, "enrollment_token.revoked", actor=me.actor, now=now, token_id=t.id)
        return {"id": token_id, "revoked": True}

    # devices
    @app.get("/v1/devices", tags=T, responses=_ERRORS)
    def list_devices(
        _: Viewer,
        selector: Annotated[str | None, Query(max_length=1024)] = None,
        status: Annotated[Literal["online", "stale", "offline", "revoked"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> dict[str, Any]:
        sel = Selector.parse(selector)
        limit = min(limit, cfg.page_limit)
        now = ctx.clock()
        with ctx.db.read() as s:
            q = select(Device).order_by(Device.enrolled_at, Device.id)
            if status == "revoked":
                q = q.where(Device.revoked.is_(True))
            elif status is not None:
                q = q.where(Device.revoked.is_(False))
                if status == "online":
                    q = q.where(Device.last_seen > now - cfg.stale_after_s)
                elif status == "stale":
                    q = q.where(
                        Device.last_seen <= now - cfg.stale_after_s,
                        Device.last_seen > now - cfg.offline_after_s,
                    )
                else:
                    q = q.where(Device.last_seen <= now - cfg.offline_after_s)
            matched = [
                d
                for d in s.scalars(q)
                if sel.matches(
                    device_attrs(
                        device_id=d.id,
                        name=d.name,
                        device_class=d.device_class,
                        arch=d.arch,
                        tags=d.tags,
                        active_version=d.active_version,
                        active_name=d.active_name,
                    )
                )
            ]
            page = matched[offset : offset + limit]
            return {"total": len(matched), "devices": [_device_dict(d, now, cfg) for d in page]}

    @app.patch("/v1/devices/{device_id}", tags=T, responses=_ERRORS)
    def patch_device(device_id: DeviceId, body: DevicePatch, me: Deployer) -> dict[str, Any]:
        now = ctx.clock()
        with ctx.db.write() as s:
            d = s.get(Device, device_id)
            if d is None:
                raise NotFoundError(
                    f"unknown device {device_id!r}", hint="list devices with: edgefleet devices list"
                )
            changed = {}
            if body.tags is not None:
                changed["tags"] = {"from": d.tags, "to": body.tags}
                d.tags = body.tags
            if body.name is not None:
                changed["name"] = {"from": d.name, "to": body.name}
                d.name = body.name
            audit(s, "device.updated", actor=me.actor, now=now, device_id=d.id, **changed)
            return _device_dict(d, now, cfg)

    @app.post("/v1/devices/{device_id}/revoke", tags=T, responses=_ERRORS)
    def revoke_device(device_id: DeviceId, me: Admin) -> dict[str, Any]:
        now = ctx.clock()
        with ctx.db.write() as s:
            d = s.get(Device, device_id)
            if d is None:
                raise NotFoundError(
                    f"unknown device {device_id!r}", hint="list devices with: edgefleet devices list"
                )
            d.revoked = True
            audit(s, "device.revoked", actor=me.actor, now=now, device_id=d.id)
        return {"id": device_id, "revoked": True}

    @app.post("/v1/devices/{device_id}/nudge", tags=T, responses=_ERRORS)
    def nudge_device(device_id: DeviceId, _: Deployer) -> dict[str, Any]:
        with ctx.db.read() as s:
            if s.get(Device, device_id) is None:
                raise NotFoundError(
                    f"unknown device {device_id!r}", hint="list devices with: edgefleet devices list"
                )
        return {"sent": ctx.notifier.nudge([device_id])}

    # releases
    @app.post("/v1/releases", tags=T, responses=_ERRORS)
    def register_release(body: ReleaseRegister, me: Deployer, response: Response) -> dict[str, Any]:
        out, created = ctx.repo.register(ctx.db, body, actor=me.actor, now=ctx.clock())
        response.status_code = 201 if created else 200
        return out

    @app.get("/v1/releases", tags=T, responses=_ERRORS)
    def list_releases(
        _: Viewer, name: Annotated[str | None, Query(max_length=64)] = None
    ) -> list[dict[str, Any]]:
        with ctx.db.read() as s:
            q = select(Release).order_by(Release.registered_at)
            if name:
                q = q.where(Release.name == name)
            return [release_dict(s, r) for r in s.scalars(q)]

    @app.get("/v1/releases/{name}/{version}", tags=T, responses=_ERRORS)
    def get_release(
        name: Annotated[str, Path(max_length=64)], version: Annotated[str, Path(max_length=64)], _: Viewer
    ) -> dict[str, Any]:
        with ctx.db.read() as s:
            r = s.scalars(
                select(Release).where(Release.name == name, Release.version == version)
            ).one_or_none()
            if r is None:
                raise NotFoundError(
                    f"release {name} {version} is not registered",
                    hint=f"register it: edgefleet release register {name} {version}",
                )
            return release_dict(s, r)

    @app.get("/v1/repository", tags=T, responses=_ERRORS, summary="Repository status (role versions, expiry)")
    def repository_status(_: Viewer) -> dict[str, Any]:
        return {
            **ctx.repo.open().status(),
            "can_refresh": ctx.repo.can_refresh(),
            "timestamp_expires": ctx.repo.timestamp_expires(),
        }

    @app.post("/v1/repository/refresh", tags=T, responses=_ERRORS, summary="Re-sign timestamp.json now")
    def repository_refresh(_: Admin) -> dict[str, Any]:
        if not ctx.repo.can_refresh():
            raise ConflictError(
                "this server holds no timestamp key", hint="start it with --keys DIR holding the online keys"
            )
        res = ctx.repo.refresh_if_due(ctx.db, force=True)
        return {"refreshed": res is not None, "result": res}

    # rollouts
    @app.post("/v1/rollouts", tags=T, responses=_ERRORS, status_code=201)
    def create_rollout(body: RolloutCreate, me: Deployer) -> dict[str, Any]:
        return ctx.engine.create(body, actor=me.actor)

    @app.get("/v1/rollouts", tags=T, responses=_ERRORS)
    def list_rollouts(
        _: Viewer,
        state: Annotated[str | None, Query(max_length=32)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return ctx.engine.list(state=state, limit=limit)

    @app.get("/v1/rollouts/{rollout_id}", tags=T, responses=_ERRORS)
    def get_rollout(rollout_id: Annotated[str, Path(max_length=64)], _: Viewer) -> dict[str, Any]:
        return ctx.engine.describe(rollout_id)

    @app.get("/v1/rollouts/{rollout_id}/audit", tags=T, responses=_ERRORS)
    def rollout_audit(rollout_id: Annotated[str, Path(max_length=64)], _: Viewer) -> list[dict[str, Any]]:
        with ctx.db.read() as s:
            if s.get(Rollout, rollout_id) is None:
                raise NotFoundError(
                    f"no rollout {rollout_id!r}", hint="list them with: edgefleet rollout list"
                )
        return ctx.engine.audit_log(rollout_id, limit=cfg.page_limit)

    @app.post("/v1/rollouts/{rollout_id}/{action}", tags=T, responses=_ERRORS)
    def rollout_action(
        rollout_id: Annotated[str, Path(max_length=64)],
        action: Literal["pause", "resume", "abort", "rollback", "approve"],
        me: Deployer,
        body: RolloutAction | None = None,
    ) -> dict[str, Any]:
        return ctx.engine.act(rollout_id, action, actor=me.actor, reason=body.reason if body else None)

    @app.get("/v1/audit", tags=T, responses=_ERRORS)
    def audit_log(
        _: Viewer,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
        action: Annotated[str | None, Query(max_length=64)] = None,
        since_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> list[dict[str, Any]]:
        with ctx.db.read() as s:
            q = (
                select(AuditEntry)
                .where(AuditEntry.id > since_id)
                .order_by(AuditEntry.id)
                .limit(min(limit, cfg.page_limit))
            )
            if action:
                q = q.where(AuditEntry.action == action)
            return [a.to_dict() for a in s.scalars(q)]
