"""OpenTelemetry traces, opt-in: the server's request spans and the agent's update steps.

Nothing is traced unless a tracer provider is configured: either by the standard OpenTelemetry
environment (``OTEL_TRACES_EXPORTER=console`` or ``otlp``, read by :func:`configure_from_env`) or by a
caller handing one to :func:`use_provider` (tests, embedding applications). Without the ``otel`` extra
(``opentelemetry-sdk``, ``opentelemetry-instrumentation-fastapi``) every span is a no-op, so the lean
agent pays nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from edgefleet.errors import ConfigError

__all__ = ["configure_from_env", "span", "tracer_provider", "use_provider"]

_provider: Any = None


def use_provider(provider: Any) -> None:
    """Send edgefleet's spans to ``provider`` (an ``opentelemetry.sdk.trace.TracerProvider``); None stops."""
    global _provider
    _provider = provider


def tracer_provider() -> Any:
    """The provider edgefleet's spans go to, or None when tracing is off."""
    return _provider


def configure_from_env(service_name: str) -> Any:
    """Set up tracing from ``OTEL_TRACES_EXPORTER`` (``console``, ``otlp`` or unset/``none``).

    Returns:
        The provider now in use, or None when tracing stays off.

    Raises:
        ConfigError: an exporter is asked for but the ``otel`` extra (or the OTLP exporter) is missing,
            or the exporter name is unknown.
    """
    name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if name in ("", "none"):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as e:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={name} but OpenTelemetry's SDK is not installed ({e})",
            hint="pip install 'edgefleet[otel]', or unset OTEL_TRACES_EXPORTER",
        ) from e
    if name == "console":
        exporter: Any = ConsoleSpanExporter()
    elif name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise ConfigError(
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter",
                hint="pip install opentelemetry-exporter-otlp-proto-http (endpoint: OTEL_EXPORTER_OTLP_ENDPOINT)",
            ) from e
        exporter = OTLPSpanExporter()
    else:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={name!r} is not an exporter edgefleet knows",
            hint="use console, otlp or none",
        )
    attrs = {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}
    provider = TracerProvider(resource=Resource.create(attrs))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)
    return provider


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` under the current one when tracing is on; otherwise nothing happens.

    An exception leaving the block is recorded on the span (status ERROR) and re-raised.
    """
    if _provider is None:
        yield None
        return
    tracer = _provider.get_tracer("edgefleet")
    attrs = {k: v for k, v in attributes.items() if isinstance(v, (str, bool, int, float))}
    with tracer.start_as_current_span(name, attributes=attrs) as s:
        yield s
