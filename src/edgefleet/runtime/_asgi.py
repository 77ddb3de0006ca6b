"""The hot routes of the runtime API, answered without FastAPI's routing and dependency machinery.

FastAPI resolves routes, dependencies and exception middleware for every request: on a small
device that costs as much CPU as the model call it wraps. :class:`DirectRoutes` sits in front of the
app (an ASGI middleware) and hands ``POST /v1/predict`` and ``POST /v2/models/{name}/infer`` straight
to their handlers, with the same guard (token, rate limit) and the same error answers; every other
request, and these paths with other methods, go through FastAPI unchanged (which still documents
them in OpenAPI).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgefleet.errors import EdgefleetError

__all__ = ["DirectRoutes"]

log = logging.getLogger(__name__)

_V2_INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")


class DirectRoutes:
    """ASGI middleware: the predict routes straight to their handlers, everything else to ``app``."""

    def __init__(
        self,
        app: Any,
        *,
        predict: Callable[[Request], Awaitable[Response]],
        infer: Callable[[Request, str, str | None], Awaitable[Response]] | None,
        guard: Callable[[Request], Awaitable[None]] | None,
        error_response: Callable[[EdgefleetError], Response],
    ) -> None:
        self.app = app
        self.predict = predict
        self.infer = infer
        self.guard = guard
        self.error_response = error_response

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/v1/predict":
            handler: Any = self.predict
            args: tuple = ()
        elif self.infer is not None and path.startswith("/v2/") and (m := _V2_INFER.match(path)):
            handler, args = self.infer, (m["name"], m["version"])
        else:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            if self.guard is not None:
                await self.guard(request)
            response = await handler(request, *args)
        except EdgefleetError as e:
            response = self.error_response(e)
        except Exception as e:
            log.exception("unexpected error in the HTTP API")
            response = JSONResponse(
                {
                    "error": "internal",
                    "message": f"unexpected error: {type(e).__name__}",
                    "hint": "see the runtime log",
                },
                status_code=500,
            )
        await response(scope, receive, send)
