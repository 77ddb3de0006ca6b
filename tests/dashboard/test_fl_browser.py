"""The dashboard's Federated page (issue 14 item 4) in headless chromium against a real server: a job registered
and reported through /v1/fl/jobs with the client calls `edgefleet fl start --server` makes shows its rounds,
participation, accuracy per round and ε; a deployer stops it from the page and the control plane records it."""

from __future__ import annotations

import time

import httpx
import pytest
from fleettools import shared_repo

pytestmark = pytest.mark.browser

ROUNDS = [
    {"round": 1, "selected": 4, "answered": 4, "late": 0, "dropped": 0, "bytes_up": 10560, "bytes_down": 30000,
     "seconds": 6.5, "accuracy": 0.769, "epsilon": 1.25, "aggregated": True},
    {"round": 2, "selected": 4, "answered": 3, "late": 1, "dropped": 0, "bytes_up": 7920, "bytes_down": 30000,
     "seconds": 60.0, "accuracy": 0.83, "epsilon": 1.8, "aggregated": True},
]  # fmt: skip


def test_federated_page_shows_rounds_and_a_deployer_stops_the_job(
    browser, tmp_path, tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split
):
    from edgefleet.client import Client
    from edgefleet.server import ServerConfig, start_server

    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    cfg = ServerConfig(data_dir=tmp_path / "server", repo_dir=repo, keys_dir=tmp_path / "nokeys")
    with start_server(cfg) as srv, Client(srv.url, token=srv.admin_token) as api:
        spec = {"rounds": 5, "clients_per_round": 4, "min_clients": 2, "strategy": "fedavg"}
        api.create_fl_job("digits-eu", "10.0.0.5:9092", duration_s=3600, selector="region=eu", spec=spec)
        api.fl_job_progress("digits-eu", ROUNDS)
        admin = {"Authorization": f"Bearer {srv.admin_token}"}
        r = httpx.post(
            f"{srv.url}/v1/operator-tokens", json={"name": "ui", "role": "deployer"}, headers=admin
        )
        deployer = r.json()["token"]

        ctx = browser.new_context(viewport={"width": 1366, "height": 768})
        page = ctx.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: errors.append(f"dialog: {d.message}") or d.dismiss())
        try:
            page.goto(f"{srv.url}/dashboard?token={deployer}#federated")
            page.wait_for_selector("body[data-loaded='federated']", timeout=30_000)
            card = page.inner_text("[data-fljob='digits-eu']")
            assert "running" in card and "region=eu" in card and "10.0.0.5:9092" in card, card
            assert "2/5 rounds" in card and "participation 87.5%" in card and "ε 1.8" in card, card
            rows = page.locator("[data-fljob='digits-eu'] table.rounds tbody tr")
            assert rows.count() == 2
            assert rows.nth(1).inner_text().split("\t")[:4] == ["2", "4", "3", "1"]
            assert "83.0%" in rows.nth(1).inner_text() and "76.9%" in rows.nth(0).inner_text()
            assert (
                page.locator("[data-fljob='digits-eu'] svg[aria-label='accuracy per round (%)']").count() == 1
            )
            page.click("[data-fljob='digits-eu'] button.stop-fl")
            deadline = time.monotonic() + 30
            while api.fl_job("digits-eu")["state"] != "stopped":
                assert time.monotonic() < deadline, api.fl_job("digits-eu")
                time.sleep(0.1)
            page.wait_for_function(
                "() => !document.querySelector(\"[data-fljob='digits-eu'] button.stop-fl\")", timeout=30_000
            )
            assert "stopped" in page.inner_text("[data-fljob='digits-eu']")
            assert errors == [], errors
        finally:
            ctx.close()
