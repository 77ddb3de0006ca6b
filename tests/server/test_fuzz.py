"""Fuzz the device-facing API against its own OpenAPI spec: whatever a device sends, never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from servertools import Harness, make_harness


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory, published):
    client, clock = make_harness(tmp_path_factory.mktemp("fuzz"), repo_dir=published / "repo")
    with client:
        h = Harness(client, clock)
        dev = h.enroll()
        other = h.enroll()
        h.register("1.0.0")
        h.rollout("1.0.0", waves=[100], soak_s=0, gates={"min_devices": 1, "min_requests": 0})
        yield {"app": client.app, "dev": dev, "other": other, "harness": h}


def _operations(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(tag_regex="^(device|repository)$")
    return [r.ok() for r in schema.get_all_operations()]


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, pytest.param(GenerationMode.NEGATIVE, marks=pytest.mark.slow)]
)
def test_device_api_never_answers_5xx(fuzz_env, mode):
    dev, other = fuzz_env["dev"], fuzz_env["other"]
    ops = _operations(fuzz_env["app"])
    assert {op.path for op in ops} >= {
        "/v1/enroll",
        "/v1/devices/{device_id}/heartbeat",
        "/v1/devices/{device_id}/telemetry",
        "/repository/targets/{path}",
        "/repository/metadata/{path}",
    }
    calls: dict[int, int] = {}
    for op in ops:

        @given(case=op.as_strategy(generation_mode=mode), pick=st.integers(0, 2))
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case, pick):
            # A third of the cases carry the real device's credentials and id, so the fuzzer reaches
            # the handlers (bodies, headers) and not only the authentication in front of them.
            if pick == 0 and "device_id" in (case.path_parameters or {}):
                case.path_parameters["device_id"] = dev["device_id"]
                case.headers = {**(case.headers or {}), **dev["headers"]}
            elif pick == 1:
                case.headers = {**(case.headers or {}), **other["headers"]}
            r = case.call_and_validate(checks=[not_a_server_error])
            calls[r.status_code] = calls.get(r.status_code, 0) + 1

        try:
            run()
        except Unsatisfiable:  # e.g. no negative value exists for a free-form path parameter
            assert mode is GenerationMode.NEGATIVE
    assert calls and not any(code >= 500 for code in calls)
    assert any(200 <= code < 300 for code in calls) or mode is GenerationMode.NEGATIVE


def test_enrollment_fuzz_left_no_device_behind(fuzz_env):
    """Random enrollment bodies carry no valid token: the fleet is still the two devices of the fixture."""
    h = fuzz_env["harness"]
    assert h.c.get("/v1/devices", headers=h.admin).json()["total"] == 2
