"""Device power/thermal policies pushed per device group (issue 15, item 4): the routes, who may call
them, the group a device falls in, and bad documents refused with nothing stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys

POLICY = {
    "min_dwell_s": 30,
    "rules": [
        {
            "name": "low-battery",
            "when": {"battery_below": 30, "power_source": "battery"},
            "actions": {"variant": "smaller", "defer": ["download"]},
        }
    ],
}


def test_a_group_policy_reaches_the_devices_it_selects_only(harness):
    h = harness
    sensor, gateway = h.enroll("sensor"), h.enroll("gateway")
    r = h.c.put(
        "/v1/device-policies/sensors", json={"selector": "class=sensor", "policy": POLICY}, headers=h.admin
    )
    assert r.status_code == 200, r.text
    got = h.c.get(f"/v1/devices/{sensor['device_id']}/device-policy", headers=sensor["headers"]).json()
    assert got["source"] == "group:sensors" and got["policy"]["rules"][0]["name"] == "low-battery"
    other = h.c.get(f"/v1/devices/{gateway['device_id']}/device-policy", headers=gateway["headers"]).json()
    assert other["source"] == "none" and other["policy"] is None
    # a higher-priority group wins; its etag changes so devices notice
    body = {"selector": "*", "priority": 10, "policy": {"min_dwell_s": 0, "rules": []}}
    assert h.c.put("/v1/device-policies/all", json=body, headers=h.admin).status_code == 200
    again = h.c.get(f"/v1/devices/{sensor['device_id']}/device-policy", headers=sensor["headers"]).json()
    assert again["source"] == "group:all" and again["etag"] != got["etag"]
    # a device reads its own only
    r = h.c.get(f"/v1/devices/{sensor['device_id']}/device-policy", headers=gateway["headers"])
    assert r.status_code == 403
    listed = h.c.get("/v1/device-policies", headers=h.token("viewer")).json()
    assert [p["name"] for p in listed] == ["all", "sensors"]
    assert h.c.delete("/v1/device-policies/all", headers=h.admin).status_code == 200
    actions = [a["action"] for a in h.c.get("/v1/audit", headers=h.admin).json()]
    assert actions.count("device_policy.set") == 2 and actions.count("device_policy.delete") == 1


def test_bad_policies_are_refused_and_nothing_is_stored(harness):
    h = harness
    bad = [
        {
            "selector": "*",
            "policy": {"rules": [{"name": "x", "when": {"battery_below": 300}, "actions": {}}]},
        },
        {"selector": "*", "policy": {"rules": [{"name": "x", "when": {}, "actions": {"variant": "bigger"}}]}},
        {"selector": "*", "policy": {"surprise": 1}},
        {"selector": "class=", "policy": POLICY},
        {"selector": "*", "policy": POLICY, "extra": True},
    ]
    for body in bad:
        r = h.c.put("/v1/device-policies/g1", json=body, headers=h.admin)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["message"] and r.json()["hint"]
    assert (
        h.c.put("/v1/device-policies/Bad%20Name", json={"policy": POLICY}, headers=h.admin).status_code == 422
    )
    assert h.c.get("/v1/device-policies", headers=h.admin).json() == []
    assert h.c.delete("/v1/device-policies/g1", headers=h.admin).status_code == 404


def test_the_cli_pushes_lists_and_removes_group_policies(tmp_path, published):
    import yaml
    from typer.testing import CliRunner

    from edgefleet.cli import app
    from edgefleet.server import ServerConfig, start_server

    good = tmp_path / "policy.yaml"
    good.write_text(yaml.safe_dump(POLICY))
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: x, when: {battery_below: 300}, actions: {}}]\n")
    cfg = ServerConfig(
        data_dir=tmp_path / "server", repo_dir=published / "repo", keys_dir=tmp_path / "nokeys"
    )
    with start_server(cfg) as srv:
        env = {"EDGEFLEET_SERVER_URL": srv.url, "EDGEFLEET_TOKEN": srv.admin_token, "COLUMNS": "200"}

        def cli(*args):
            return CliRunner().invoke(app, list(args), env=env)

        r = cli("devices", "power-policy", "set", "sensors", str(good), "--selector", "class=sensor")
        assert r.exit_code == 0, r.output
        r = cli("devices", "power-policy", "list", "--json")
        assert r.exit_code == 0 and [p["selector"] for p in json.loads(r.output)] == ["class=sensor"]
        r = cli("devices", "power-policy", "list")
        assert "low-battery" in r.output
        # a bad file: one clear line and a hint, no traceback, nothing pushed
        p = subprocess.run(
            [sys.executable, "-m", "edgefleet.cli", "devices", "power-policy", "set", "g2", str(bad)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=120,
            check=False,
        )
        assert p.returncode == 1 and "battery_below" in p.stderr and "Traceback" not in p.stderr
        assert cli("devices", "power-policy", "delete", "sensors").exit_code == 0
        assert json.loads(cli("devices", "power-policy", "list", "--json").output) == []
