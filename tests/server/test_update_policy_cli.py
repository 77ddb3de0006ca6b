"""Operators set update policies from the CLI (``edgefleet update-policy``), see devices held by them in
``edgefleet rollout show``, and override them with ``edgefleet rollout create --force``. A real server over
HTTP with its engine running; devices are plain HTTP clients that heartbeat like an agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from servertools import hardware
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import InputError, ValidationError
from edgefleet.server import ServerConfig, start_server


@pytest.fixture
def srv(tmp_path, published):
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        engine_tick_s=0.1,
    )
    with start_server(cfg) as s:
        yield s


def cli(srv, *args, ok: bool = True):
    env = {"EDGEFLEET_SERVER_URL": srv.url, "EDGEFLEET_TOKEN": srv.admin_token, "COLUMNS": "200"}
    r = CliRunner().invoke(app, list(args), env=env)
    if ok:
        assert r.exit_code == 0, (r.output, r.exception)
    return r


def enroll(srv, n: int) -> list[dict]:
    admin = {"Authorization": f"Bearer {srv.admin_token}"}
    devs = []
    for _ in range(n):
        tok = httpx.post(f"{srv.url}/v1/enrollment-tokens", json={"tags": {"site": "berlin"}}, headers=admin)
        tok.raise_for_status()
        r = httpx.post(
            f"{srv.url}/v1/enroll", json={"token": tok.json()["token"], "hardware": hardware("cpu")}
        )
        r.raise_for_status()
        d = r.json()
        d["headers"] = {"Authorization": f"Bearer {d['device_token']}"}
        beat(srv, d)
        devs.append(d)
    return devs


def beat(srv, d: dict) -> dict:
    body = {
        "device_id": d["device_id"],
        "state": "idle",
        "resources": {"metered": False, "power_source": "ac"},
    }
    r = httpx.post(f"{srv.url}/v1/devices/{d['device_id']}/heartbeat", json=body, headers=d["headers"])
    r.raise_for_status()
    return r.json()


def wait_for(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_update_policy_from_the_cli_holds_a_rollout_and_force_overrides_it(srv):
    devs = enroll(srv, 2)
    # a window that is closed now: it opens in two hours (UTC) and lasts one
    start = datetime.now(UTC) + timedelta(hours=2)
    window = f"{start:%H}:00-{(start + timedelta(hours=1)):%H}:00"
    out = cli(
        srv, "update-policy", "set", "night", "--selector", "site=berlin", "--window", window, "--tz", "UTC"
    )
    assert f"night selector 'site=berlin' priority 0: windows {window} UTC" in out.stdout
    listed = json.loads(cli(srv, "update-policy", "list", "--json").stdout)
    assert [p["name"] for p in listed] == ["night"] and listed[0]["policy"]["windows"] == [window]
    assert window in cli(srv, "update-policy", "show", "night").stdout

    cli(srv, "release", "register", "digits", "1.0.0")
    created = json.loads(
        cli(srv, "rollout", "create", "digits", "1.0.0", "--waves", "100", "--soak", "0s", "--json").stdout
    )
    rid = created["id"]
    for d in devs:
        got = beat(srv, d)
        assert got["assignment"] is None and "outside the maintenance window" in got["wait_reason"]
    wait_for(
        lambda: "held by update policies: 2 devices (2 window)" in cli(srv, "rollout", "show", rid).stdout,
        "rollout show to report the held devices",
    )
    assert json.loads(cli(srv, "rollout", "show", rid, "--json").stdout)["state"] == "running"

    cli(srv, "rollout", "abort", rid)
    forced = cli(
        srv, "rollout", "create", "digits", "1.0.0", "--waves", "100", "--soak", "0s", "--force", "--json"
    )
    fid = json.loads(forced.stdout)["id"]
    assert "forced" in cli(srv, "rollout", "show", fid).stdout
    for d in devs:
        got = beat(srv, d)
        assert got["assignment"]["version"] == "1.0.0" and "wait_reason" not in got

    assert "deleted update policy night" in cli(srv, "update-policy", "delete", "night").stdout
    assert "no update policies" in cli(srv, "update-policy", "list").stdout


@pytest.mark.parametrize(
    "args, error, needle",
    [
        (["--window", "2am-5am"], InputError, "HH:MM-HH:MM"),
        (["--window", "25:00-03:00"], ValidationError, "24-hour clock"),
        (["--tz", "Mars/Olympus_Mons"], ValidationError, "unknown time zone"),
        (["--pin", "1.0.0", "--defer-until", "2027-01-01"], InputError, "exclude each other"),
        (["--defer-until", "someday"], ValidationError, "defer_until"),
    ],
)
def test_bad_policies_from_the_cli_are_clear_errors_and_nothing_is_stored(srv, args, error, needle):
    r = cli(srv, "update-policy", "set", "bad", *args, ok=False)
    assert r.exit_code != 0 and isinstance(r.exception, error), (r.output, r.exception)
    assert needle in str(r.exception.message), r.exception.message
    assert json.loads(cli(srv, "update-policy", "list", "--json").stdout) == []


def test_a_bad_timezone_is_one_error_line_without_a_traceback(srv):
    env = {"EDGEFLEET_SERVER_URL": srv.url, "EDGEFLEET_TOKEN": srv.admin_token, "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "update-policy", "set", "x", "--tz", "Nowhere/Land"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 1 and "unknown time zone" in r.stderr and "Traceback" not in r.stderr, r.stderr
