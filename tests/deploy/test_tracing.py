"""OpenTelemetry traces, opt-in: the server's request spans, seen through the SDK's in-memory exporter."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edgefleet import _tracing
from edgefleet.errors import ConfigError


def test_server_requests_become_spans_named_by_route_template(tmp_path):
    from edgefleet.server import ServerConfig, start_server

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with start_server(ServerConfig(data_dir=tmp_path / "s"), tracer_provider=provider) as srv:
        auth = {"Authorization": f"Bearer {srv.admin_token}"}
        with httpx.Client(base_url=srv.url, timeout=10, headers=auth) as c:
            assert c.get("/v1/rollouts/nope").status_code == 404
            assert c.get("/v1/releases").status_code == 200
            assert c.get("/metrics").status_code == 200  # excluded: scrapes would drown the traces
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind.name == "SERVER"]
    routes = {
        (
            s.attributes.get("http.route"),
            s.attributes.get("http.response.status_code", s.attributes.get("http.status_code")),
        )
        for s in servers
    }
    assert ("/v1/rollouts/{rollout_id}", 404) in routes and ("/v1/releases", 200) in routes
    assert not any(s.attributes.get("http.route") == "/metrics" for s in servers)


def test_tracing_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert _tracing.configure_from_env("x") is None
    with _tracing.span("nothing", a=1) as s:
        assert s is None


def test_an_unknown_exporter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkinn")
    with pytest.raises(ConfigError, match="zipkinn") as e:
        _tracing.configure_from_env("x")
    assert "console, otlp or none" in e.value.hint
    assert _tracing.tracer_provider() is None


def test_console_exporter_from_the_environment(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    try:
        provider = _tracing.configure_from_env("edgefleet-test")
        assert provider is _tracing.tracer_provider()
        assert provider.resource.attributes["service.name"] == "edgefleet-test"
    finally:
        _tracing.use_provider(None)
