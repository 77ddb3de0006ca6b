"""The local HTTP API: a thin FastAPI layer over :class:`Runtime` (same behaviour as the Python API).

``POST /v1/predict`` (JSON, ``application/octet-stream`` or ``application/x-npz``), ``GET /v1/model``,
``GET /healthz``, ``GET /metrics``, the Open Inference Protocol's ``/v2`` routes (``runtime._oip``);
OpenAPI at ``/docs``. Optional bearer token; per-client rate limit.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import inspect
import io
import json
import logging
import os
import socket
import threading
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from edgefleet.errors import (
    AuthError,
    ConfigError,
    EdgefleetError,
    InputError,
    PayloadTooLargeError,
    RateLimitedError,
    ValidationError,
)
from edgefleet.runtime._asgi import DirectRoutes
from edgefleet.runtime._config import ApiConfig
from edgefleet.runtime._oip import add_open_inference_routes
from edgefleet.runtime._predictor import Priority
from edgefleet.runtime._runtime import Runtime

__all__ = ["ApiServer", "PredictRequest", "create_app"]

log = logging.getLogger(__name__)

_PRIORITY_NAMES = {p.name.lower(): int(p) for p in Priority}
_MAX_DEADLINE_MS = 3_600_000.0


class TensorB64(BaseModel):
    """A tensor sent as base64 bytes (little-endian, C order) with its dtype and shape."""

    model_config = ConfigDict(extra="forbid")
    b64: str = Field(description="base64 of the raw array bytes")
    dtype: Literal["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]
    shape: list[int] = Field(max_length=8, description="array shape; axis 0 is the batch")


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict`` (JSON)."""

    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any] | list[Any] = Field(
        description="{input name: nested list | TensorB64 | list of {b64} samples}, or, for a "
        "single-input model, the batch itself. Axis 0 is the batch: wrap one example in a list."
    )
    priority: Literal["low", "normal", "high", "urgent"] | int = Field(
        "normal", description="higher is served first (0..3 or a name)"
    )
    deadline_ms: float | None = Field(
        None, description="answer within this many milliseconds or fail with 504; never run late"
    )
    escalate: bool | None = Field(None, description="null: by confidence; true: always; false: never")
    preprocessed: bool = Field(False, description="inputs are model tensors: skip the contract")


def _priority(value: Any) -> int:
    if isinstance(value, bool):
        raise ValidationError(
            "priority must be a name or an integer", hint="low, normal, high, urgent or 0..3"
        )
    if isinstance(value, str):
        p = _PRIORITY_NAMES.get(value.lower())
        if p is None:
            raise ValidationError(
                f"unknown priority {value!r}", hint="use low, normal, high or urgent (or 0..3)"
            )
        return p
    if isinstance(value, int) and min(Priority) <= value <= max(Priority):
        return value
    raise ValidationError(f"priority {value!r} is out of range", hint="use 0 (low) .. 3 (urgent)")


def _deadline(ms: Any) -> float | None:
    if ms is None:
        return None
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not np.isfinite(ms):
        raise ValidationError("deadline_ms must be a finite number of milliseconds", hint="e.g. 100")
    if ms > _MAX_DEADLINE_MS:
        raise ValidationError(
            f"deadline_ms {ms} is more than an hour", hint="omit deadline_ms for no deadline"
        )
    return ms / 1000.0  # <= 0 is refused by the runtime with a 504 "already passed"


def _decode_tensor(name: str, obj: dict[str, Any], max_bytes: int) -> np.ndarray:
    try:
        t = TensorB64.model_validate(obj)
    except PydanticValidationError as e:
        raise ValidationError(
            f"input {name!r}: invalid base64 tensor: {_pyd_problems(e)}",
            hint='send {"b64": ..., "dtype": "float32", "shape": [1, 64]}',
        ) from e
    if len(t.b64) > max_bytes * 4 // 3 + 4:
        raise PayloadTooLargeError(f"input {name!r} is larger than {max_bytes} bytes", hint="send less data")
    try:
        raw = base64.b64decode(t.b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValidationError(
            f"input {name!r}: b64 is not valid base64", hint="encode with standard base64"
        ) from e
    dtype = np.dtype(t.dtype).newbyteorder("<")
    if any(d < 0 for d in t.shape) or int(np.prod(t.shape, dtype=np.float64)) * dtype.itemsize != len(raw):
        raise ValidationError(
            f"input {name!r}: {len(raw)} bytes do not make shape {t.shape} of {t.dtype}",
            hint="bytes must equal prod(shape) * itemsize",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(t.shape).astype(dtype.newbyteorder("="))


def load_npz_bounded(body: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    """Read an ``.npz`` request body with its decompressed size bounded *before* anything is inflated.

    ``np.load`` inflates every member first: 1 MB of deflated zeros became 1.17 GB of memory. Here each
    member's declared size and its ``.npy`` header (shape x itemsize) are checked against what is left of
    ``max_bytes`` before the member is read, and ``zipfile`` never yields more than the declared size.

    Raises:
        PayloadTooLargeError: the arrays would take more than ``max_bytes``.
        InputError: the body is not an ``.npz`` of plain numeric arrays.
    """

    def too_large(what: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f".npz body {what}, more than the {max_bytes} bytes allowed decompressed",
            hint="send fewer rows per request, or raise EDGEFLEET_API_MAX_BODY_BYTES",
            limit=max_bytes,
        )

    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            infos = zf.infolist()
            # each member is an .npy header (numpy caps it at 10,000 bytes) and then the array's bytes
            if sum(i.file_size for i in infos) > max_bytes + 10_240 * len(infos):
                raise too_large("declares members that add up")
            left = max_bytes
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise InputError(
                        f".npz member {info.filename!r} is not an .npy array",
                        hint="write it with numpy.savez",
                    )
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    if dtype.hasobject:
                        raise InputError(
                            f"array {info.filename[:-4]!r} holds Python objects", hint="send numbers only"
                        )
                    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                    if nbytes > left:
                        raise too_large(f"array {info.filename[:-4]!r} has shape {list(shape)}")
                    left -= nbytes
                with zf.open(info) as f:
                    out[info.filename[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
    except (PayloadTooLargeError, InputError):
        raise
    except Exception as e:  # zipfile/npy format errors of many kinds
        raise InputError(f"body is not a valid .npz file: {e}", hint="write it with numpy.savez") from e
    return out


def _decode_value(name: str, value: Any, max_bytes: int) -> Any:
    if isinstance(value, dict):
        return _decode_tensor(name, value, max_bytes)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        samples = []
        for v in value:
            if set(v) != {"b64"} or not isinstance(v["b64"], str):
                raise ValidationError(
                    f"input {name!r}: byte samples must be objects with one key 'b64'",
                    hint='send [{"b64": "..."}, ...] for images or other encoded samples',
                )
            try:
                samples.append(base64.b64decode(v["b64"], validate=True))
            except (binascii.Error, ValueError) as e:
                raise ValidationError(
                    f"input {name!r}: b64 is not valid base64", hint="encode with base64"
                ) from e
        return samples
    return value


def _pyd_problems(e: PydanticValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<body>'}: {err['msg']}" for err in e.errors()[:5]
    )


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
                f"invalid request: {_pyd_problems(e)}", hint="see the schema at /docs"
            ) from e
        inputs: Any = req.inputs
        if isinstance(inputs, dict):
            inputs = {k: _decode_value(k, v, cfg.max_body_bytes) for k, v in inputs.items()}
        else:
            inputs = _decode_value("inputs", inputs, cfg.max_body_bytes)
        opts = {
            "priority": _priority(req.priority),
            "deadline": _deadline(req.deadline_ms),
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
                "priority": _priority(int(pr) if pr.lstrip("-").isdigit() else pr),
                "deadline": _deadline(dl_ms),
                "escalate": None if esc is None else esc.lower() in ("true", "1"),
                "preprocessed": False,
            }
        else:
            raise InputError(
                f"unsupported content type {ctype!r}",
                hint="send application/json, application/octet-stream or application/x-npz",
            )
        result = await runtime.apredict(inputs, limiter=limiter, **opts)
        return JSONResponse(result.to_dict())

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


def tls_options(cfg: ApiConfig) -> dict[str, Any]:
    """uvicorn's TLS settings for ``cfg`` (empty without a certificate), checked so errors say what to fix."""
    if not cfg.tls_cert and not cfg.tls_key:
        if cfg.tls_client_ca:
            raise ConfigError("a client CA needs TLS", hint="give --tls-cert and --tls-key too")
        return {}
    import ssl

    from edgefleet.tls import server_context

    server_context(cfg.tls_cert, cfg.tls_key, client_ca=cfg.tls_client_ca)  # fails early, with a hint
    opts: dict[str, Any] = {"ssl_certfile": cfg.tls_cert, "ssl_keyfile": cfg.tls_key}
    if cfg.tls_client_ca:
        opts |= {"ssl_ca_certs": cfg.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return opts


class ApiServer:
    """Runs the API with uvicorn on a TCP port or a Unix socket, in the foreground or a thread.

    The socket is bound before uvicorn starts, so ``port=0`` picks a free port (see ``.url``) and a
    Unix socket gets owner-only permissions (0600) before anyone can connect.
    """

    def __init__(
        self, runtime: Runtime, config: ApiConfig | None = None, *, log_level: str = "warning"
    ) -> None:
        import uvicorn

        self.runtime = runtime
        self.config = cfg = config or runtime.config.api
        self.app = create_app(runtime, cfg)
        if cfg.uds:
            path = Path(cfg.uds)
            if path.exists():
                if not path.is_socket():
                    raise ConfigError(f"{path} exists and is not a socket", hint="choose another --uds path")
                path.unlink()  # a stale socket from a previous run
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            self.url = f"http+unix://{path}"
        else:
            from edgefleet.tls import check_listen

            check_listen(cfg.host, tls=bool(cfg.tls_cert), insecure_http=cfg.insecure_http, what="the API")
            family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((cfg.host, cfg.port))
            except OSError as e:
                sock.close()
                raise ConfigError(
                    f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}", hint="choose another --port"
                ) from e
            host, port = sock.getsockname()[:2]
            self.port = port
            scheme = "https" if cfg.tls_cert else "http"
            self.url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        sock.listen(2048)
        self._sock = sock
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_level=log_level,
                access_log=False,
                timeout_graceful_shutdown=5,
                lifespan="off",
                **tls_options(cfg),
            )
        )
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve in the foreground until SIGINT or SIGTERM, then shut down gracefully and return."""
        import signal

        previous = {}
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises the stop signal once it has shut down; a graceful stop is not an error
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: None)
        try:
            self._server.run(sockets=[self._sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._cleanup()

    def start(self, timeout: float = 10.0) -> ApiServer:
        """Serve in a background thread; returns once it accepts connections."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        t0 = time.monotonic()
        while not self._server.started:
            if time.monotonic() - t0 > timeout or not self._thread.is_alive():
                raise ConfigError("the API server did not start", hint="see the log")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._cleanup()

    def _cleanup(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        if self.config.uds:
            Path(self.config.uds).unlink(missing_ok=True)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
