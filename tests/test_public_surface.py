"""Pins the public surface of every package: a change here is a deliberate API change."""

import importlib

import pytest

PACKAGES = [
    "edgefleet.protocol",
    "edgefleet.optimize",
    "edgefleet.bundle",
    "edgefleet.registry",
    "edgefleet.runtime",
    "edgefleet.agent",
    "edgefleet.telemetry",
    "edgefleet.server",
    "edgefleet.errors",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist(name):
    mod = importlib.import_module(name)
    assert isinstance(mod.__all__, list)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


def test_protocol_surface():
    import edgefleet.protocol as p

    for name in ["Manifest", "Assignment", "Heartbeat", "TelemetryBatch", "HardwareProfile"]:
        assert name in p.__all__


def test_errors_share_one_root():
    import edgefleet.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.EdgefleetError)
