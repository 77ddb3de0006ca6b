"""The dashboard's rollouts page shows devices an update policy holds back (issue 15 item 7): a real server
with its engine running, two devices in a group whose maintenance window is closed, headless chromium."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fleettools import shared_repo
from servertools import hardware

pytestmark = pytest.mark.browser


def test_rollouts_page_shows_devices_held_by_update_policies(
    browser, tmp_path, tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split
):
    from edgefleet.client import Client
    from edgefleet.server import ServerConfig, start_server

    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    cfg = ServerConfig(
        data_dir=tmp_path / "server", repo_dir=repo, keys_dir=tmp_path / "nokeys", engine_tick_s=0.1
    )
    with start_server(cfg) as srv, Client(srv.url, token=srv.admin_token) as api:
        devs = []
        for _ in range(2):
            tok = api.create_enrollment_token(tags={"site": "berlin"})["token"]
            d = httpx.post(f"{srv.url}/v1/enroll", json={"token": tok, "hardware": hardware("cpu")}).json()
            devs.append(d)
        start = datetime.now(UTC) + timedelta(hours=2)
        window = f"{start:%H}:00-{(start + timedelta(hours=1)):%H}:00"  # closed now
        api.set_update_policy("night", {"windows": [window]}, selector="site=berlin")
        for d in devs:  # the first report: rollouts may admit them
            body = {"device_id": d["device_id"], "state": "idle"}
            headers = {"Authorization": f"Bearer {d['device_token']}"}
            httpx.post(f"{srv.url}/v1/devices/{d['device_id']}/heartbeat", json=body, headers=headers)
        api.register_release("digits", "1.0.0")
        rid = api.create_rollout("digits", "1.0.0", waves=[100], soak_s=3600)["id"]
        deadline = time.monotonic() + 60
        while (api.rollout(rid).get("evaluation") or {}).get("counts", {}).get("held") != 2:
            assert time.monotonic() < deadline, api.rollout(rid).get("evaluation")
            time.sleep(0.1)
        admin = {"Authorization": f"Bearer {srv.admin_token}"}
        r = httpx.post(f"{srv.url}/v1/operator-tokens", json={"name": "ui", "role": "viewer"}, headers=admin)
        viewer = r.json()["token"]

        ctx = browser.new_context(viewport={"width": 1366, "height": 768})
        page = ctx.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(f"{srv.url}/dashboard?token={viewer}#rollouts")
            page.wait_for_selector("body[data-loaded='rollouts']", timeout=30_000)
            text = page.inner_text("main")
            assert "2 held by update policies (2 window)" in text, text
            assert errors == [], errors
        finally:
            ctx.close()
