"""HTTP plumbing of the control plane: request limits, the JSON error bodies, operator authentication.

Every error leaves the server as ``{"error", "message", "hint", "details"?}`` (``ErrorBody``), whether it
was raised by a service (``EdgefleetError``), by FastAPI's validation, by Starlette or by the database.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet.errors import EdgefleetError, ForbiddenError, ValidationError
from edgefleet.protocol import ErrorBody
from edgefleet.server._auth import DEVICE_PREFIX, Operator, Role, authenticate_operator, bearer
from edgefleet.server._db import Database, is_db_unavailable

__all__ = [
    "ERRORS",
    "Bearer",
    "authenticate",
    "BodyLimit",
    "DEVICE_ID_RE",
    "install_error_handlers",
    "operator",
    "token_of",
    "validation_error",
]

log = logging.getLogger(__name__)

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 503)
}
_bearer = HTTPBearer(auto_error=False, description="device token (efd_...) or operator token (efo_...)")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def token_of(
    cred: HTTPAuthorizationCredentials | None, *, hint: str = "send 'Authorization: Bearer <token>'"
) -> str:
    """The bearer token FastAPI parsed (refused when missing, malformed or too long)."""
    return bearer(cred.credentials if cred is not None else None, hint=hint)


def operator(role: Role, *, fleet: bool = False) -> Callable[..., Operator]:
    """A FastAPI dependency: the caller's operator token, with at least ``role``.

    ``fleet``: the fleet-data routes' wording (a device token there is refused with 403, not 401).
    """
    hint = (
        "send 'Authorization: Bearer <operator token>'" if fleet else "send 'Authorization: Bearer <token>'"
    )

    def dep(request: Request, cred: Bearer) -> Operator:
        token = token_of(cred, hint=hint)
        if fleet and token.startswith(DEVICE_PREFIX):
            raise ForbiddenError(
                "device tokens cannot read fleet data",
                hint="use an operator token (efo_...) with at least the viewer role",
            )
        return authenticate(request.app.state.ctx.db, token, role)

    return dep


async def _device_credential(device_id: str, request: Request, cred: Bearer) -> Any:
    """The device's client certificate or bearer token, refused before the body is even validated when
    neither is acceptable (``ServerConfig.device_auth``)."""
    from edgefleet.tls import peer_cert_der

    token = cred.credentials if cred else None
    return request.app.state.ctx.devices.credential(device_id, token, peer_cert_der(request.scope))


def _authenticated_device(device_id: str, request: Request, cred: DeviceCred) -> Any:
    """The credential, checked against ``device_id``'s record (unrevoked, its own token or certificate)
    before the body is validated: another device's token is refused with 403, never told what was wrong
    with the body."""
    request.app.state.ctx.devices.authenticate(device_id, cred)
    return cred


# ``device_id`` is the route's path parameter (each route declares its pattern); the credential is a
# ``server._director.DeviceCredential``.
DeviceCred = Annotated[Any, Depends(_device_credential)]
AuthenticatedDevice = Annotated[Any, Depends(_authenticated_device)]


def authenticate(db: Database, token: str, role: Role) -> Operator:
    """The operator ``token`` belongs to, refused unless it has at least ``role``."""
    with db.read() as s:
        op = authenticate_operator(s, token)
    op.require(role)
    return op


def validation_error(errors: list[dict[str, Any]], where: str) -> ValidationError:
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


# --- error bodies --------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI, on_error: Callable[[int], None]) -> None:
    """Answer every error with an ``ErrorBody``; ``on_error(status)`` counts them."""

    def reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
        on_error(status)
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


# --- request limits ------------------------------------------------------------------------------

_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # \u0000 that is not itself an escaped backslash


class BodyLimit:
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
