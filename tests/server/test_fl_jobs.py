"""Federated jobs on the control plane (issue 14 item 1): an operator registers a job; the director names it,
signed, in the heartbeat answers of the devices its selector picks, and stops naming it when it ends."""

from __future__ import annotations

import json

import pytest
from servertools import Harness, make_harness


@pytest.fixture
def h(tmp_path):
    client, clock = make_harness(tmp_path)
    with client:
        yield Harness(client, clock)


@pytest.fixture(params=["sqlite", "postgresql"])
def hdb(request, tmp_path):
    """The harness on SQLite, and on PostgreSQL (JSONB rounds and tags)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    client, clock = make_harness(tmp_path, db_url=url)
    with client:
        yield Harness(client, clock)


def _job(**kw):
    return {
        "job_id": "digits-fl",
        "superlink": "127.0.0.1:9092",
        "selector": "region=eu",
        "duration_s": 600,
    } | kw


def test_a_registered_job_is_named_to_selected_devices_only_and_signed(hdb):
    h = hdb
    eu = h.enroll(tags={"region": "eu"})
    us = h.enroll(tags={"region": "us"})
    assert "federated" not in h.beat(eu)  # no job: nothing in the answer
    deployer = h.token("deployer")
    r = h.c.post("/v1/fl/jobs", json=_job(spec={"rounds": 3}), headers=deployer)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "running" and r.json()["until"] == pytest.approx(h.clock() + 600)
    answer = h.beat(eu)
    assert answer["federated"] == {
        "job_id": "digits-fl",
        "superlink": "127.0.0.1:9092",
        "until": h.clock() + 600,
    }
    signed = json.loads(answer["signed"]["payload"])
    assert signed["federated"] == answer["federated"]  # the agent acts on the signed copy only
    assert "federated" not in h.beat(us)
    assert json.loads(h.beat(us)["signed"]["payload"])["federated"] is None


def test_rounds_are_reported_and_a_stopped_or_expired_job_is_no_longer_named(hdb):
    h = hdb
    eu = h.enroll(tags={"region": "eu"})
    deployer, viewer = h.token("deployer"), h.token("viewer")
    assert h.c.post("/v1/fl/jobs", json=_job(), headers=deployer).status_code == 201
    again = h.c.post("/v1/fl/jobs", json=_job(), headers=deployer)
    assert again.status_code == 409 and "is running" in again.json()["message"]
    rounds = [{"round": 1, "selected": 3, "answered": 3, "late": 0, "dropped": 0, "accuracy": 0.8,
               "epsilon": None, "device": "must-not-be-kept"}]  # fmt: skip
    r = h.c.post("/v1/fl/jobs/digits-fl/progress", json={"rounds": rounds}, headers=deployer)
    assert r.status_code == 200, r.text
    shown = h.c.get("/v1/fl/jobs/digits-fl", headers=viewer).json()
    assert shown["rounds_done"] == 1 and shown["accuracy"] == 0.8 and "device" not in shown["rounds"][0]
    assert [j["job_id"] for j in h.c.get("/v1/fl/jobs", headers=viewer).json()] == ["digits-fl"]
    assert h.c.post("/v1/fl/jobs/digits-fl/stop", headers=viewer).status_code == 403
    r = h.c.post("/v1/fl/jobs/digits-fl/stop", json={"state": "finished"}, headers=deployer)
    assert r.status_code == 200 and r.json()["state"] == "finished"
    assert "federated" not in h.beat(eu)
    refused = h.c.post("/v1/fl/jobs/digits-fl/progress", json={"rounds": []}, headers=deployer)
    assert refused.status_code == 409  # fl start stops its SuperLink when it sees this
    # a new job with the same id after the old one ended; its time runs out without an end report
    assert h.c.post("/v1/fl/jobs", json=_job(duration_s=30), headers=deployer).status_code == 201
    assert h.beat(eu)["federated"]["job_id"] == "digits-fl"
    h.clock.advance(31)
    h.ctx.devices.fl_jobs.invalidate()
    assert "federated" not in h.beat(eu)
    assert h.c.get("/v1/fl/jobs/digits-fl", headers=viewer).json()["state"] == "expired"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (_job(superlink="no-port"), 422, "superlink"),
        (_job(selector="region"), 400, "selector term"),
        (_job(duration_s=0), 422, "duration_s"),
        (_job(job_id="Bad Id"), 422, "job_id"),
    ],
)
def test_bad_jobs_are_clear_errors(h, body, status, words):
    r = h.c.post("/v1/fl/jobs", json=body, headers=h.admin)
    assert r.status_code == status and words in r.text
    assert h.c.get("/v1/fl/jobs", headers=h.admin).json() == []


def test_unknown_job_is_not_found(h):
    assert h.c.get("/v1/fl/jobs/nope", headers=h.admin).status_code == 404
    assert h.c.post("/v1/fl/jobs/nope/stop", headers=h.admin).status_code == 404


def test_operators_list_show_and_stop_jobs_from_the_cli(tmp_path):
    """`edgefleet fl jobs | job | stop` against a real server over HTTP."""
    from typer.testing import CliRunner

    from edgefleet.cli import app
    from edgefleet.client import Client
    from edgefleet.errors import NotFoundError
    from edgefleet.server import ServerConfig, start_server

    cfg = ServerConfig(data_dir=tmp_path / "server", keys_dir=tmp_path / "nokeys", engine_enabled=False)
    with start_server(cfg) as srv, Client(srv.url, token=srv.admin_token) as api:
        env = {"EDGEFLEET_SERVER_URL": srv.url, "EDGEFLEET_TOKEN": srv.admin_token, "COLUMNS": "200"}

        def cli(*args):
            return CliRunner().invoke(app, ["fl", *args], env=env)

        assert "no federated jobs" in cli("jobs").output
        api.create_fl_job(
            "digits-eu", "127.0.0.1:9092", duration_s=600, selector="region=eu", spec={"rounds": 3}
        )
        api.fl_job_progress("digits-eu", [{"round": 1, "selected": 2, "answered": 2, "late": 0, "dropped": 0,
                                          "bytes_up": 100, "bytes_down": 200, "seconds": 1.0, "accuracy": 0.5}])  # fmt: skip
        r = cli("jobs")
        assert r.exit_code == 0 and "digits-eu" in r.output and "1/3" in r.output and "50.0%" in r.output
        r = cli("job", "digits-eu", "--json")
        assert r.exit_code == 0 and json.loads(r.output)["rounds"][0]["answered"] == 2
        r = cli("stop", "digits-eu", "--reason", "wrong data", "--json")
        assert r.exit_code == 0, r.output
        assert (
            json.loads(r.output)["state"] == "stopped" and api.fl_job("digits-eu")["reason"] == "wrong data"
        )
        r = cli("stop", "nope")
        assert isinstance(r.exception, NotFoundError) and "no federated job 'nope'" in r.exception.message


def test_selected_devices_send_node_keys_that_fl_start_registers(hdb, tmp_path):
    """Flower's SuperNode authentication: a selected device sends its per-job node public key with its own
    credential; the deployer reads the keys and marks those its SuperLink accepts; the device sees that."""
    from edgefleet.federated._security import node_key

    h = hdb
    eu, us, other = (
        h.enroll(tags={"region": "eu"}),
        h.enroll(tags={"region": "us"}),
        h.enroll(tags={"region": "eu"}),
    )
    deployer = h.token("deployer")
    assert h.c.post("/v1/fl/jobs", json=_job(), headers=deployer).status_code == 201
    key = node_key(tmp_path / "node.key")

    def post(dev, public, job="digits-fl", headers=None):
        return h.c.post(
            f"/v1/devices/{dev['device_id']}/fl/{job}/node-key",
            json={"public_key": public},
            headers=headers or dev["headers"],
        )

    r = post(eu, key)
    assert r.status_code == 200, r.text
    assert r.json() == {"job_id": "digits-fl", "registered": False}
    # not selected, not a key, not this device's credential, no such job: refused, nothing stored
    r = post(us, key)
    assert r.status_code == 409 and "does not select this device" in r.json()["message"]
    bad = post(other, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC")
    assert bad.status_code == 400 and "OpenSSH" in bad.json()["message"], bad.text
    assert post(other, key, headers=eu["headers"]).status_code == 403
    assert post(eu, key, job="nope").status_code == 404
    assert h.c.get("/v1/fl/jobs/digits-fl/node-keys", headers=eu["headers"]).status_code in (401, 403)

    keys = h.c.get("/v1/fl/jobs/digits-fl/node-keys", headers=deployer).json()
    assert keys == [{"device_id": eu["device_id"], "public_key": key, "registered": False}]
    marked = h.c.post(
        "/v1/fl/jobs/digits-fl/node-keys/registered",
        json={"keys": [{"device_id": eu["device_id"], "public_key": key}]},
        headers=deployer,
    )
    assert marked.json()["registered"] == 1
    assert post(eu, key).json()["registered"] is True
    # a new key (the device lost its state) must be registered again; a new run of the job forgets the keys
    assert post(eu, node_key(tmp_path / "again.key")).json()["registered"] is False
    h.c.post("/v1/fl/jobs/digits-fl/stop", json={"state": "finished"}, headers=deployer)
    assert post(eu, key).status_code == 409
    assert h.c.post("/v1/fl/jobs", json=_job(), headers=deployer).status_code == 201
    assert h.c.get("/v1/fl/jobs/digits-fl/node-keys", headers=deployer).json() == []
