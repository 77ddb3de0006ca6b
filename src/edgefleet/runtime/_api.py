"""The local HTTP API: a thin FastAPI layer over :class:`Runtime` (same behaviour as the Python API).

``POST /v1/predict`` (JSON, ``application/octet-stream`` or ``application/x-npz``), ``GET /v1/model``,
``GET /healthz``, ``GET /metrics``, the Open Inference Protocol's ``/v2`` routes (``runtime._oip``);
OpenAPI at ``/docs``. Optional bearer token; per-client rate limit.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import anyio
import numpy as np
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError as PydanticValidationError

from edgefleet.errors import (
    AuthError,
    EdgefleetError,
    InputError,
    PayloadTooLargeError,
    RateLimitedError,
    ValidationError,
)
from edgefleet.runtime._asgi import DirectRoutes
from edgefleet.runtime._config import ApiConfig
from edgefleet.runtime._decode import (
    PredictRequest,
    decode_value,
    load_npz_bounded,
    parse_deadline,
    parse_priority,
    pydantic_problems,
)
from edgefleet.runtime._oip import add_open_inference_routes
from edgefleet.runtime._runtime import Runtime

__all__ = ["create_app"]

log = logging.getLogger(__name__)


class _RateLimiter:
    """Token bucket per client key, the least recently seen buckets evicted beyond ``max_clients``."""

    def __init__(self, rate: float, burst: int, max_clients: int) -> None:
        self.rate, self.burst, self.max_clients = rate, float(burst), max_clients
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when allowed, else seconds until the client may try again."""
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = [self.burst, now]
                self._buckets[key] = b
                if len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            tokens = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
            if tokens >= 1:
                b[0] = tokens - 1
                return 0.0
            b[0] = tokens
            return (1 - tokens) / self.rate


def _error_response(e: EdgefleetError) -> Any:
    headers = {}
    retry = getattr(e, "retry_after", None) or e.details.get("retry_after")
    if retry is not None:
        headers["Retry-After"] = str(max(1, int(np.ceil(float(retry)))))
    if isinstance(e, AuthError):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(e.to_dict(), status_code=e.status_code, headers=headers)


def create_app(runtime: Runtime, config: ApiConfig | None = None) -> Any:
    """The FastAPI app serving ``runtime``."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

    import edgefleet

    cfg = config or runtime.config.api
    limiter = anyio.CapacityLimiter(cfg.max_concurrency)
    rate = (
        _RateLimiter(cfg.rate_limit_rps, cfg.rate_limit_burst, cfg.max_clients)
        if cfg.rate_limit_rps
        else None
    )
    token = cfg.token.encode() if cfg.token else None
    metrics = runtime.metrics if runtime.config.metrics else None

    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:
        # FastAPI's own OpenTelemetry hooks cost ~100 µs per request; the runtime has its own metrics
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    # Swagger UI and ReDoc come from the installed package, not a CDN: /docs works on an air-gapped site
    app = FastAPIOffline(
        title="edgefleet runtime",
        version=getattr(edgefleet, "__version__", "0"),
        description="On-device inference: batching, priorities, deadlines, fallback, escalation.",
        **extra,
    )

    def _reject(reason: str) -> None:
        if metrics:
            metrics.rejected.labels(reason).inc()

    async def guard(request: Request) -> None:
        if token is not None:
            header = request.headers.get("authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
                _reject("auth")
                raise AuthError(
                    "missing or wrong bearer token",
                    hint="send 'Authorization: Bearer <token>' (see --token-file)",
                )
        if rate is not None:
            client = request.client.host if request.client else "unix-socket"
            wait = rate.take(client)
            if wait > 0:
                _reject("rate_limited")
                raise RateLimitedError(
                    f"client {client} sends more than {cfg.rate_limit_rps:g} requests/s",
                    hint=f"slow down; retry after {wait:.2f} s",
                    retry_after=round(wait, 3),
                )

    # resolving a dependency costs tens of µs per request: only pay for it when there is a guard
    guarded = [Depends(guard)] if token is not None or rate is not None else []

    @app.exception_handler(EdgefleetError)
    async def _edgefleet_error(_: Request, e: EdgefleetError) -> Any:
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, e: RequestValidationError) -> Any:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]
        )
        return _error_response(ValidationError(f"invalid request: {problems}", hint="see /docs"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> Any:
        body = {"error": "http", "message": str(e.detail)}
        return JSONResponse(body, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> Any:
        log.exception("unexpected error in the HTTP API")
        return JSONResponse(
            {
                "error": "internal",
                "message": f"unexpected error: {type(e).__name__}",
                "hint": "see the runtime log",
            },
            status_code=500,
        )

    async def _read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise InputError("Content-Length is not a number", hint="send a valid request") from None
            if declared > cfg.max_body_bytes:
                _reject("too_large")
                raise PayloadTooLargeError(
                    f"request body is {declared} bytes, more than the {cfg.max_body_bytes} allowed",
                    hint="send fewer rows per request, or raise EDGEFLEET_API_MAX_BODY_BYTES",
                    limit=cfg.max_body_bytes,
                )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body_bytes:
                _reject("too_large")
                raise PayloadTooLargeError(
                    f"request body is more than the {cfg.max_body_bytes} bytes allowed",
                    hint="send fewer rows per request, or raise EDGEFLEET_API_MAX_BODY_BYTES",
                    limit=cfg.max_body_bytes,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _from_json(body: bytes) -> tuple[Any, dict[str, Any]]:
        try:
            # orjson first (several times faster); what it refuses (NaN/Infinity tokens, integers past
            # 64 bits) goes through the standard parser so such bodies get the same answers as before
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        try:
            if doc is None:
                doc = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise InputError(
                f"request body is not valid JSON: {e}", hint="send a JSON object (see /docs)"
            ) from e
        if not isinstance(doc, dict):
            raise ValidationError("request body must be a JSON object", hint='send {"inputs": {...}}')
        try:
            req = PredictRequest.model_validate(doc)
        except PydanticValidationError as e:
            raise ValidationError(
                f"invalid request: {pydantic_problems(e)}", hint="see the schema at /docs"
            ) from e
        inputs: Any = req.inputs
        if isinstance(inputs, dict):
            inputs = {k: decode_value(k, v, cfg.max_body_bytes) for k, v in inputs.items()}
        else:
            inputs = decode_value("inputs", inputs, cfg.max_body_bytes)
        opts = {
            "priority": parse_priority(req.priority),
            "deadline": parse_deadline(req.deadline_ms),
            "escalate": req.escalate,
            "preprocessed": req.preprocessed,
        }
        return inputs, opts

    def _from_binary(
        body: bytes, ctype: str, dtype: str | None, shape: str | None, input_name: str | None
    ) -> Any:
        if ctype == "application/x-npz":
            return load_npz_bounded(body, cfg.max_body_bytes)
        if dtype is None:
            if not body:
                raise ValidationError("empty request body", hint="send the sample's bytes (e.g. a PNG)")
            value: Any = [body]  # one encoded sample (an image...) for the contract's decode step
        else:
            try:
                dt = np.dtype(dtype)
                dims = [int(d) for d in (shape or "").split(",") if d.strip()]
            except (TypeError, ValueError) as e:
                raise ValidationError(
                    f"bad dtype or shape: {e}", hint="e.g. ?dtype=float32&shape=1,64"
                ) from e
            if dt.kind not in "biuf" or not dims or any(d < 0 for d in dims) or len(dims) > 8:
                raise ValidationError(
                    "dtype must be numeric and shape a list of sizes", hint="e.g. ?dtype=float32&shape=1,64"
                )
            if int(np.prod(dims, dtype=np.float64)) * dt.itemsize != len(body):
                raise ValidationError(
                    f"{len(body)} bytes do not make shape {dims} of {dtype}",
                    hint="bytes must equal prod(shape) * itemsize (little-endian, C order)",
                )
            value = np.frombuffer(body, dtype=dt.newbyteorder("<")).reshape(dims).astype(dt)
        if input_name:
            return {input_name: value}
        return value

    binary_params = [
        {"name": "priority", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "deadline_ms", "in": "query", "required": False, "schema": {"type": "number"}},
        {"name": "escalate", "in": "query", "required": False, "schema": {"type": "boolean"}},
        {"name": "dtype", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "shape", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "input", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    error_responses = {
        str(code): {
            "description": desc,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for code, desc in [
            (400, "malformed request"),
            (401, "missing or wrong token"),
            (413, "payload too large"),
            (422, "input does not match the model"),
            (429, "rate limited"),
            (503, "overloaded (see Retry-After)"),
            (504, "deadline exceeded or model timed out"),
        ]
    }

    @app.post(
        "/v1/predict",
        dependencies=guarded,
        summary="Answer one request (JSON, octet-stream or npz body)",
        openapi_extra={
            "parameters": binary_params,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": error_responses,
        },
    )
    async def predict(request: Request) -> Any:
        body = await _read_body(request)
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        q = request.query_params
        if ctype in ("application/json", ""):
            inputs, opts = _from_json(body)
        elif ctype in ("application/octet-stream", "application/x-npz"):
            inputs = _from_binary(body, ctype, q.get("dtype"), q.get("shape"), q.get("input"))
            esc = q.get("escalate")
            if esc is not None and esc.lower() not in ("true", "false", "1", "0"):
                raise ValidationError(
                    "escalate must be true or false", hint="omit it to decide by confidence"
                )
            dl = q.get("deadline_ms")
            try:
                dl_ms = float(dl) if dl is not None else None
            except ValueError:
                raise ValidationError("deadline_ms must be a number", hint="e.g. 100") from None
            pr = q.get("priority", "normal")
            opts = {
                "priority": parse_priority(int(pr) if pr.lstrip("-").isdigit() else pr),
                "deadline": parse_deadline(dl_ms),
                "escalate": None if esc is None else esc.lower() in ("true", "1"),
                "preprocessed": False,
            }
        else:
            raise InputError(
                f"unsupported content type {ctype!r}",
                hint="send application/json, application/octet-stream or application/x-npz",
            )
        result = await runtime.apredict(inputs, limiter=limiter, **opts)
        return Response(orjson.dumps(result.to_dict()), media_type="application/json")

    @app.get("/v1/model", dependencies=guarded, summary="The served model's manifest and state")
    async def model() -> Any:
        m = runtime.manifest
        return {
            "key": m.key,
            "name": m.name,
            "version": m.version,
            "variant": m.variant,
            "manifest": json.loads(m.to_json()),
            "status": runtime.status(),
        }

    @app.get("/healthz", summary="Liveness and the served model (no token needed)")
    async def healthz() -> Any:
        try:
            m = runtime.manifest
        except EdgefleetError:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok", "model": m.key}

    @app.get("/metrics", dependencies=guarded, summary="Prometheus metrics")
    async def prom() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    infer = add_open_inference_routes(
        app, runtime, dependencies=guarded, read_body=_read_body, limiter=limiter
    )
    # the two predict routes skip FastAPI's per-request machinery (same guard, same error answers)
    app.add_middleware(
        DirectRoutes,
        predict=predict,
        infer=infer,
        guard=guard if guarded else None,
        error_response=_error_response,
    )

    from edgefleet.protocol import ErrorBody

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model_cls in (PredictRequest, ErrorBody):
            js = model_cls.model_json_schema(ref_template="#/components/schemas/{model}")
            for k, v in js.pop("$defs", {}).items():
                comps[k] = v
            comps[model_cls.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
