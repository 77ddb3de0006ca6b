"""Operators drive the control plane from the CLI: tokens, devices, releases, rollouts."""

from __future__ import annotations

import asyncio
import json
import stat

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import AuthError, ConflictError, InputError, NotFoundError, ServerError
from edgefleet.server import ServerConfig, start_server
from edgefleet.sim import Fleet, Scenario


@pytest.fixture(scope="module")
def srv(tmp_path_factory, published):
    d = tmp_path_factory.mktemp("cli")
    cfg = ServerConfig(
        data_dir=d / "server", repo_dir=published / "repo", keys_dir=d / "nokeys", engine_tick_s=0.1
    )
    with start_server(cfg) as s:
        fleet = Fleet(s.url, Scenario(), size=4, admin_token=s.admin_token)
        asyncio.run(fleet.enroll(tags_for=lambda dev: {"region": "eu-west" if dev.index < 3 else "us-east"}))
        yield s


def cli(srv, *args, ok: bool = True):
    env = {"EDGEFLEET_SERVER_URL": srv.url, "EDGEFLEET_TOKEN": srv.admin_token, "COLUMNS": "200"}
    r = CliRunner().invoke(app, list(args), env=env)
    if ok:
        assert r.exit_code == 0, (r.output, r.exception)
    return r


def test_devices_list_and_show(srv):
    out = json.loads(cli(srv, "devices", "list", "--selector", "region=eu-*", "--json").stdout)
    assert out["total"] == 3
    dev = out["devices"][0]["id"]
    shown = json.loads(cli(srv, "devices", "show", dev, "--json").stdout)
    assert shown["id"] == dev and shown["tags"]["region"] == "eu-west"
    assert "4 devices" in cli(srv, "devices", "list").stdout


def test_enrollment_tokens_from_the_cli(srv, tmp_path):
    out = tmp_path / "tokens.txt"
    cli(
        srv,
        "devices",
        "tokens",
        "create",
        "--tag",
        "region=eu-west",
        "--count",
        "3",
        "--expires",
        "1h",
        "--out",
        str(out),
    )
    lines = out.read_text().split()
    assert len(lines) == 3 and all(t.startswith("efe_") for t in lines)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    listed = json.loads(cli(srv, "devices", "tokens", "list", "--json").stdout)
    assert sum(1 for t in listed if t["usable"] and t["tags"] == {"region": "eu-west"}) >= 3
    r = cli(srv, "devices", "tokens", "create", "--tag", "oops", ok=False)
    assert isinstance(r.exception, InputError)


def test_release_and_rollout_lifecycle_from_the_cli(srv):
    reg = json.loads(cli(srv, "release", "register", "digits", "1.0.0", "--json").stdout)
    assert reg["variants"][0]["variant"] == "cpu"
    assert "1.0.0" in cli(srv, "release", "list").stdout
    out = json.loads(
        cli(
            srv,
            "rollout",
            "create",
            "digits",
            "1.0.0",
            "--selector",
            "region=eu-*",
            "--waves",
            "50,100",
            "--soak",
            "1h",
            "--min-devices",
            "1",
            "--policy",
            "approval",
            "--gate",
            "max_latency_p95_ratio=1.3",
            "--json",
        ).stdout
    )
    rid = out["id"]
    assert out["members"] == {"admitted": 2} and out["gates"]["max_latency_p95_ratio"] == 1.3
    assert out["gates"]["min_devices"] == 1 and out["policy"] == "approval"
    assert rid in cli(srv, "rollout", "list").stdout
    shown = cli(srv, "rollout", "show", rid).stdout
    assert "install_failure_rate" in shown and "waiting for" in shown
    r = cli(srv, "rollout", "create", "digits", "1.0.0", "--selector", "region=eu-west", ok=False)
    assert isinstance(r.exception, ConflictError) and rid in r.exception.message
    assert "paused" in cli(srv, "rollout", "pause", rid, "--reason", "lunch").stdout
    r = cli(srv, "rollout", "approve", rid, ok=False)
    assert isinstance(r.exception, ConflictError)
    assert "running" in cli(srv, "rollout", "resume", rid).stdout
    assert "rolled_back" in cli(srv, "rollout", "rollback", rid).stdout
    audit = json.loads(cli(srv, "rollout", "audit", rid, "--json").stdout)
    assert [a["action"] for a in audit][-3:] == ["rollout.paused", "rollout.resumed", "rollout.rolled_back"]
    assert audit[-3]["details"]["reason"] == "lunch"
    assert "rollout.rolled_back" in cli(srv, "rollout", "audit", rid).stdout


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["rollout", "show", "ro-nope"], NotFoundError),
        (["rollout", "create", "digits", "1.0.0", "--waves", "5,1"], InputError),
        (["rollout", "create", "digits", "1.0.0", "--waves", "a,b"], InputError),
        (["rollout", "create", "digits", "1.0.0", "--soak", "soon"], InputError),
        (["release", "register", "digits", "9.9.9"], NotFoundError),
    ],
)
def test_cli_errors_are_edgefleet_errors(srv, args, error):
    r = cli(srv, *args, ok=False)
    assert isinstance(r.exception, error), r.output
    assert r.exception.hint or error is InputError


def test_wrong_token_and_unreachable_server(srv):
    r = CliRunner().invoke(
        app, ["devices", "list"], env={"EDGEFLEET_SERVER_URL": srv.url, "EDGEFLEET_TOKEN": "efo_wrong"}
    )
    assert isinstance(r.exception, AuthError)
    r = CliRunner().invoke(
        app,
        ["devices", "list"],
        env={"EDGEFLEET_SERVER_URL": "http://127.0.0.1:9", "EDGEFLEET_TOKEN": srv.admin_token},
    )
    assert isinstance(r.exception, ServerError) and "edgefleet server run" in r.exception.hint


def test_local_token_create(tmp_path):
    r = CliRunner().invoke(
        app,
        ["server", "token", "create", "--name", "ci", "--role", "viewer", "--data", str(tmp_path), "--json"],
    )
    assert r.exit_code == 0, r.output
    tok = json.loads(r.stdout)
    assert tok["token"].startswith("efo_") and tok["role"] == "viewer"
    r = CliRunner().invoke(app, ["server", "token", "list", "--data", str(tmp_path), "--json"])
    assert [t["name"] for t in json.loads(r.stdout)] == ["ci"]
    r = CliRunner().invoke(
        app, ["server", "token", "create", "--name", "x", "--role", "root", "--data", str(tmp_path)]
    )
    assert isinstance(r.exception, InputError)
