"""Dashboard fixtures: a real control plane (uvicorn on 127.0.0.1) holding a real fleet, and headless chromium."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the fleet builders live with the server tests
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from fleettools import LiveClient, build_fleet, shared_repo  # noqa: E402
from servertools import Clock, Harness  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def live_fleet(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split):
    """A server on an ephemeral port with 11 devices, two rollouts, telemetry and evaluated alerts."""
    from edgefleet.server import ServerConfig, start_server

    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    base = tmp_path_factory.mktemp("dashboard-server")
    clock = Clock()
    cfg = ServerConfig(
        data_dir=base / "server", repo_dir=repo, keys_dir=base / "no-keys", engine_enabled=False
    )
    with start_server(cfg, clock=clock) as srv, LiveClient(srv.url, srv.app) as client:
        h = Harness(client, clock)
        fleet = build_fleet(h, repo, digits_mlp, digits_split)
        r = client.post("/v1/fleet/alerts/evaluate", headers=h.admin)
        assert r.status_code == 200, r.text
        fleet.url = srv.url
        fleet.viewer_token = h.token("viewer")["Authorization"].split()[1]
        yield fleet


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("headless chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
