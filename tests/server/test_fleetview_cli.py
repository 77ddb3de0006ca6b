"""``edgefleet fleet ...`` against a real server on 127.0.0.1: overview, drift, alerts, retraining approval."""

from __future__ import annotations

import json

import pytest
from fleettools import LiveClient, build_fleet, shared_repo
from servertools import Clock, Harness

from clirun import run_cli


def _cli(capsys, *args):
    return run_cli(capsys, list(args))


@pytest.fixture
def live(tmp_path, tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split):
    from edgefleet.server import ServerConfig, start_server

    repo = shared_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split)
    clock = Clock()
    cfg = ServerConfig(
        data_dir=tmp_path / "server", repo_dir=repo, keys_dir=tmp_path / "no-keys", engine_enabled=False
    )
    with start_server(cfg, clock=clock) as srv, LiveClient(srv.url, srv.app) as client:
        h = Harness(client, clock)
        layout = [("cpu-eu-1", "cpu", "eu", None), ("cpu-us-1", "cpu", "us", "drifted")]
        f = build_fleet(h, repo, digits_mlp, digits_split, layout=layout, second_rollout=False)
        f.url = srv.url
        yield f


def test_fleet_commands_show_drift_and_approve_retraining(live, capsys, tmp_path):
    base = ["--server", live.url, "--token", live.h.admin_token]
    code, out, _ = _cli(capsys, "fleet", "overview", *base, "--json")
    assert code == 0 and json.loads(out)["devices"]["total"] == 2
    code, out, _ = _cli(capsys, "fleet", "drift", *base, "--json")
    assert code == 0
    assert [g["group"]["region"] for g in json.loads(out)["groups"] if g["drifted"]] == ["us"]
    code, out, _ = _cli(capsys, "fleet", "drift", *base)
    assert code == 0 and "drifted" in out

    view = live.h.c.app.state.fleet
    view.config = view.config.model_copy(update={"retrain_min_consecutive": 1})
    code, out, _ = _cli(capsys, "fleet", "alerts", "--evaluate", *base, "--json")
    assert code == 0 and any(a["rule"] == "drift" for a in json.loads(out))
    code, out, _ = _cli(capsys, "fleet", "retrain", "list", "--status", "pending", *base, "--json")
    (req,) = json.loads(out)

    viewer = live.h.token("viewer")["Authorization"].split()[1]
    code, _, err = _cli(
        capsys, "fleet", "retrain", "approve", req["id"], "--server", live.url, "--token", viewer
    )
    assert code == 1 and "admin role" in err and "hint" in err
    code, out, _ = _cli(capsys, "fleet", "retrain", "approve", req["id"], *base)
    assert code == 0 and f"request {req['id']}: approved" in out  # approved; no hook is configured
    code, _, err = _cli(capsys, "fleet", "retrain", "reject", req["id"], *base)
    assert code == 1 and "already approved" in err
    code, out, _ = _cli(capsys, "fleet", "maintain", *base, "--json")
    assert code == 0 and json.loads(out)["rolled_up"] == 0
