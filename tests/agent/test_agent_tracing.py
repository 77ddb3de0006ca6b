"""The agent's update steps as OpenTelemetry spans (opt-in), seen through the SDK's in-memory exporter."""

from __future__ import annotations

import pytest
from agenttools import run_until
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edgefleet import _tracing
from edgefleet.protocol import GateThresholds


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracing.use_provider(provider)
    yield exporter
    _tracing.use_provider(None)


def test_an_update_is_one_span_with_a_child_per_step(world, spans):
    a = world.agent()
    world.install(a, "1.0.0")
    done = spans.get_finished_spans()
    update = [s for s in done if s.name == "edgefleet.agent.update" and s.attributes["version"] == "1.0.0"]
    assert update, [s.name for s in done]
    steps = [s for s in done if s.parent is not None and s.parent.span_id == update[-1].context.span_id]
    assert [s.name.rsplit(".", 1)[1] for s in steps] == ["download", "stage", "health_gate", "activate"]
    download = steps[0]
    assert download.attributes["via"] == "full" and download.attributes["bytes"] > 0


def test_a_refused_update_marks_its_step_span_as_an_error(world, spans):
    a = world.agent()
    world.install(a, "1.0.0")
    spans.clear()
    world.standin.assign(world.target("1.2.0"), gates=GateThresholds(watch_window_s=0.2))  # bad golden set
    run_until(a, lambda: world.sha("1.2.0") in a.journal.state.failed, timeout=60)
    gate = [s for s in spans.get_finished_spans() if s.name == "edgefleet.agent.update.health_gate"]
    assert gate and gate[-1].status.status_code.name == "ERROR"
