"""The control plane's own observability: process figures and request latency on ``/metrics``, and
OpenTelemetry request spans when tracing is on (``edgefleet._tracing``).

``edgefleet_http_request_duration_seconds`` is labelled by method, route *template* (``/v1/devices/
{device_id}/heartbeat``, never the raw path, so label cardinality stays bounded) and status code.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector

from edgefleet import _tracing

__all__ = ["RequestMetrics", "install_observability", "register_process_metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "unmatched"  # a path no route serves (a 404): one label, whatever was asked


def register_process_metrics(registry: CollectorRegistry) -> Histogram:
    """Add ``process_*`` (CPU seconds, resident memory, open files, start time) to ``registry`` and
    return the request-duration histogram registered beside them."""
    ProcessCollector(registry=registry)
    return Histogram(
        "edgefleet_http_request_duration_seconds",
        "time from request to the end of the response, by route template and status",
        ["method", "route", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


class RequestMetrics:
    """ASGI middleware observing every HTTP request's duration in ``histogram``."""

    def __init__(self, app: Any, *, histogram: Histogram, routes: Any) -> None:
        self.app = app
        self.histogram = histogram
        self._routes = routes  # the app's router.routes, read when a template is first needed
        self._templates: dict[int, str] | None = None

    def _template(self, scope: dict[str, Any]) -> str:
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path  # FastAPI's APIRoute puts itself in the scope
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        if self._templates is None:  # plain Starlette routes (the heartbeat's fast path) and mounts
            self._templates = {}
            for r in self._routes:
                target = getattr(r, "endpoint", None) or getattr(r, "app", None)
                if target is not None and getattr(r, "path", None) is not None:
                    self._templates.setdefault(
                        id(target), r.path if hasattr(r, "endpoint") else f"{r.path}/*"
                    )
        return self._templates.get(id(endpoint), UNMATCHED)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def sent(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, sent)
        finally:
            self.histogram.labels(scope["method"], self._template(scope), str(status[0])).observe(
                time.perf_counter() - t0
            )


def install_observability(app: Any, histogram: Histogram, tracer_provider: Any = None) -> None:
    """Time every request into ``histogram`` and, when a tracer provider is given or configured
    (``OTEL_TRACES_EXPORTER``), trace requests with OpenTelemetry's FastAPI instrumentation.

    Call last in the app's construction: the timing middleware is then the outermost one.
    """
    provider = (
        tracer_provider or _tracing.tracer_provider() or _tracing.configure_from_env("edgefleet-server")
    )
    if provider is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls="/metrics,/healthz")
    app.add_middleware(RequestMetrics, histogram=histogram, routes=app.router.routes)
