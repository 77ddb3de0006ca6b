"""``edgefleet.client.Client`` against a real control plane: every call the CLI and the demo make, errors."""

from __future__ import annotations

import asyncio

import pytest

from edgefleet import errors
from edgefleet.client import Client, error_from_response
from edgefleet.server import ServerConfig, start_server
from edgefleet.sim import Fleet, Scenario


@pytest.fixture(scope="module")
def srv(tmp_path_factory, published):
    d = tmp_path_factory.mktemp("client")
    cfg = ServerConfig(
        data_dir=d / "server", repo_dir=published / "repo", keys_dir=d / "nokeys", engine_tick_s=0.1
    )
    with start_server(cfg) as s:
        fleet = Fleet(s.url, Scenario(), size=3, admin_token=s.admin_token)
        asyncio.run(fleet.enroll(tags_for=lambda dev: {"region": "eu" if dev.index < 2 else "us"}))
        yield s


@pytest.fixture
def api(srv):
    with Client(srv.url, token=srv.admin_token) as c:
        yield c


def test_devices_and_enrollment_tokens(api):
    assert api.whoami()["role"] == "admin"
    eu = api.devices(selector="region=eu")
    assert eu["total"] == 2
    dev = eu["devices"][0]["id"]
    assert api.device(dev)["tags"] == {"region": "eu"}
    assert api.tag_device(dev, {"region": "eu", "rack": "7"})["tags"] == {"region": "eu", "rack": "7"}
    tok = api.create_enrollment_token(tags={"region": "us"}, expires_in_s=600)
    assert tok["token"].startswith("efe_") and tok["tags"] == {"region": "us"}
    assert any(t["id"] == tok["id"] and t["usable"] for t in api.enrollment_tokens())
    assert api.revoke_enrollment_token(tok["id"]) == {"id": tok["id"], "revoked": True}
    assert api.devices(status="revoked")["total"] == 0


def test_release_and_rollout_lifecycle(api):
    rel = api.register_release("digits", "1.0.0")
    assert [v["variant"] for v in rel["variants"]] == ["cpu"]
    assert ("digits", "1.0.0") in {(r["name"], r["version"]) for r in api.releases()}
    assert "can_refresh" in api.repository()
    ro = api.create_rollout(
        "digits", "1.0.0", selector="region=eu", waves=[50, 100], soak_s=3600, policy="approval"
    )
    rid = ro["id"]
    assert ro["members"]["admitted"] >= 1 and ro["policy"] == "approval"
    assert api.rollout(rid)["selector"] == "region=eu"
    assert rid in {r["id"] for r in api.rollouts(state="running")}
    assert api.pause_rollout(rid, reason="lunch")["state"] == "paused"
    assert api.resume_rollout(rid)["state"] == "running"
    assert api.abort_rollout(rid)["state"] == "aborted"
    actions = [a["action"] for a in api.rollout_audit(rid)]
    assert actions[-3:] == ["rollout.paused", "rollout.resumed", "rollout.aborted"]


def test_fleet_view(api):
    assert api.fleet_overview()["devices"]["total"] == 3
    assert "groups" in api.fleet_drift(by="region", range_s=600)
    assert "outliers" in api.fleet_outliers(range_s=600)
    assert api.fleet_telemetry(by="region", range_s=600, device_class="cpu")["by"] == ["region"]
    api.evaluate_alerts()
    assert isinstance(api.alerts(state="all"), list)
    assert api.retrain_requests(status="pending") == []
    assert "rolled_up" in api.maintain()
    with pytest.raises(errors.InputError, match="not a retraining request id"):
        api.decide_retrain("rr-nope", "approve")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.rollout("ro-nope"), errors.NotFoundError),
        (lambda c: c.register_release("digits", "9.9.9"), errors.NotFoundError),
        (lambda c: c.create_rollout("digits", "1.0.0", waves=[5, 1]), errors.ValidationError),
        (lambda c: c.create_rollout("digits", "1.0.0", selector="region=mars"), errors.RolloutError),
        (lambda c: c.devices(selector="region"), errors.InputError),
    ],
)
def test_error_answers_come_back_as_edgefleet_errors(api, call, error):
    api.register_release("digits", "1.0.0")
    with pytest.raises(error) as e:
        call(api)
    assert type(e.value) is error and e.value.message and e.value.hint


def test_conflict_forbidden_and_unauthorized(srv, api):
    rid = api.create_rollout("digits", "1.0.0", selector="region=us", policy="approval")["id"]
    try:
        with pytest.raises(errors.ConflictError) as e:
            api.create_rollout("digits", "1.0.0", selector="region=us")
        assert e.value.details["other"] == rid
        with pytest.raises(errors.ConflictError):
            api.resume_rollout(rid)
    finally:
        api.abort_rollout(rid)
    with Client(srv.url, token="efo_wrong") as bad, pytest.raises(errors.AuthError):
        bad.devices()
    viewer = api.request("POST", "/v1/operator-tokens", json={"name": "v", "role": "viewer"})["token"]
    with Client(srv.url, token=viewer) as v:
        assert v.devices()["total"] == 3
        with pytest.raises(errors.ForbiddenError, match="admin"):
            v.create_enrollment_token()


def test_error_bodies_without_a_known_code():
    e = error_from_response(503, {"error": "database_unavailable", "message": "down", "hint": "retry"})
    assert type(e) is errors.ServerError and (e.message, e.hint) == ("down", "retry")
    e = error_from_response(409, {"error": "http_error", "message": "busy"})
    assert type(e) is errors.ConflictError
    e = error_from_response(502, "<html>bad gateway</html>")
    assert type(e) is errors.ServerError and "bad gateway" in e.message
    e = error_from_response(429, {"error": "rate_limited", "message": "slow", "details": {"retry_after": 3}})
    assert type(e) is errors.RateLimitedError and e.retry_after == 3.0


def test_server_not_running():
    with Client("http://127.0.0.1:9", token="efo_x", timeout=2) as c, pytest.raises(errors.ServerError) as e:
        c.devices()
    assert "cannot reach the control plane at http://127.0.0.1:9" in e.value.message
    assert "edgefleet server run" in e.value.hint
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_url_and_token_from_the_environment(srv, tmp_path, monkeypatch):
    for var in ("EDGEFLEET_SERVER_URL", "EDGEFLEET_TOKEN", "EDGEFLEET_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.AuthError, match="no operator token"):
        Client(srv.url)
    token_file = tmp_path / "token"
    token_file.write_text(srv.admin_token + "\n")
    monkeypatch.setenv("EDGEFLEET_SERVER_URL", srv.url + "/")
    monkeypatch.setenv("EDGEFLEET_TOKEN_FILE", str(token_file))
    with Client() as c:
        assert c.url == srv.url and c.whoami()["role"] == "admin"
    monkeypatch.delenv("EDGEFLEET_TOKEN_FILE")
    (tmp_path / "edgefleet-server").mkdir()
    (tmp_path / "edgefleet-server" / "admin-token").write_text(srv.admin_token)
    with Client() as c:
        assert c.whoami()["role"] == "admin"
