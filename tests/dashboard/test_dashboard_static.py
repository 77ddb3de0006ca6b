"""The dashboard's files: served without a token, self-contained (no external resources), locked by a CSP."""

from __future__ import annotations

import re

import pytest
from servertools import Harness, make_harness

from edgefleet.server._fleet_api import DASHBOARD_DIR


@pytest.fixture
def client(tmp_path):
    c, clock = make_harness(tmp_path)
    with c:
        yield Harness(c, clock).c


def test_page_and_assets_are_served_with_a_strict_policy(client):
    r = client.get("/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "/dashboard/assets/dashboard.js" in r.text and "/dashboard/assets/dashboard.css" in r.text
    js = client.get("/dashboard/assets/dashboard.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert client.get("/dashboard/assets/dashboard.css").headers["content-type"].startswith("text/css")
    for bad in ("index.html", "..%2F_app.py", "missing.js"):
        r = client.get(f"/dashboard/assets/{bad}")
        assert r.status_code == 404 and r.json()["hint"]


def test_dashboard_files_load_nothing_from_elsewhere():
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        text = (DASHBOARD_DIR / name).read_text()
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert "innerHTML" not in text and "eval(" not in text, name
