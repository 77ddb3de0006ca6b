"""A real agent under an update policy: it reports its metered link in its heartbeat, the control plane holds
the rollout's release back, and the agent journals why (once), without starting a download; on an unmetered
link the same agent gets the release. A real server over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent import Agent, AgentConfig, enroll
from edgefleet.client import Client
from edgefleet.server import ServerConfig, start_server


@pytest.fixture
def site(tmp_path, published):
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        engine_tick_s=0.1,
    )
    with start_server(cfg) as srv, Client(srv.url, token=srv.admin_token) as api:
        yield srv, api


def _agent(api: Client, url: str, published: Path, state: Path, *, metered: bool) -> Agent:
    cfg = AgentConfig(state_dir=state, request_timeout_s=10, metered=metered)
    tok = api.create_enrollment_token(tags={"site": "field"})["token"]
    enroll(cfg, token=tok, root_json=published / "repo" / "metadata" / "1.root.json", server_url=url)
    return Agent(cfg)


def test_a_metered_agent_waits_and_journals_why(site, published, tmp_path):
    srv, api = site
    metered = _agent(api, srv.url, published, tmp_path / "metered", metered=True)
    free = _agent(api, srv.url, published, tmp_path / "free", metered=False)
    try:
        for a in (metered, free):
            a.power.tick()  # read the device state the heartbeat reports
            assert a.heartbeat() is not None  # first report: rollouts may admit it
        assert api.device(metered.creds.device_id)["resources"]["metered"] is True
        api.set_update_policy("field", {"download_only_unmetered": True}, selector="site=field")
        api.register_release("digits", "1.0.0")
        api.create_rollout("digits", "1.0.0", waves=[100], soak_s=3600)
        for _ in range(3):  # several polls: the reason is journalled once
            resp = metered.heartbeat()
            assert resp is not None and resp.assignment is None
        waits = [e for e in metered.journal.state.history if e["event"] == "update_waiting"]
        assert len(waits) == 1 and "only on unmetered links" in waits[0]["reason"]
        assert metered.journal.state.pending is None
        resp = free.heartbeat()
        assert resp is not None and resp.assignment is not None and resp.assignment.version == "1.0.0"
    finally:
        metered.close()
        free.close()
