"""The retraining job end to end against a real control plane (HTTP, SQLite), driven through the CLI.

A drift alert's retraining request arrives on stdin (as the server's command hook sends it), the job
retrains digits 1.0.0 on labelled shifted samples, optimizes both variants with their budgets, publishes
1.0.1 with its lineage, registers it and proposes a rollout that waits; the operator approves it; the
lineage query shows the chain.
"""

from __future__ import annotations

import json

import httpx
import pytest

from clirun import run_cli
from edgefleet.retrain import load_snapshot
from edgefleet.server import ServerConfig
from edgefleet.server._runner import start_server

pytestmark = pytest.mark.slow


def _hardware(cls: str) -> dict:
    return {
        "arch": "x86_64",
        "cores": 4,
        "ram_mb": 4096,
        "disk_free_mb": 10_000,
        "isa_flags": ["avx2"],
        "onnxruntime_version": "1.20.0",
        "device_class": cls,
        "tags": {"region": "north"},
    }


def _cli(capsys, monkeypatch, argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    import io

    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return run_cli(capsys, argv)


def test_drift_request_to_proposed_release_then_approved_rollout_and_lineage(
    tmp_path, repo_copy, shifted_snapshot, base_data, capsys, monkeypatch
):
    cfg = ServerConfig(data_dir=tmp_path / "server", repo_dir=repo_copy["repo"], keys_dir=repo_copy["keys"])
    with start_server(cfg) as srv:
        token = cfg.admin_token_path.read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=srv.url, headers=auth, timeout=30) as c:
            for cls in ("gateway", "sensor"):
                t = c.post("/v1/enrollment-tokens", json={"tags": {"region": "north"}}).json()["token"]
                dev = c.post("/v1/enroll", json={"token": t, "hardware": _hardware(cls)}).json()
                r = c.post(
                    f"/v1/devices/{dev['device_id']}/heartbeat",
                    json={"device_id": dev["device_id"], "state": "enrolled", "health": {}, "events": []},
                    headers={"Authorization": f"Bearer {dev['device_token']}"},
                )
                assert r.status_code == 200, r.text
            assert c.post("/v1/releases", json={"name": "digits", "version": "1.0.0"}).status_code == 201
        conn = ["--server", srv.url, "--token", token]
        request = {
            "id": "req0123456789abc",
            "model": "digits",
            "reason": "drift on digits@1.0.0 in north",
            "subject": {"release": "digits@1.0.0", "region": "north"},
        }
        for k, v in {
            "RUNS": "5",
            "WARMUP_RUNS": "1",
            "THROUGHPUT_BATCHES": "[1]",
            "THROUGHPUT_RUNS": "2",
            "MEASURE_MEMORY": "false",
            "INTERLEAVE_RUNS": "3",
        }.items():  # the optimizer's short measurements (its defaults time 200 runs per variant)
            monkeypatch.setenv(f"EDGEFLEET_OPTIMIZE_{k}", v)
        code, out, err = _cli(
            capsys,
            monkeypatch,
            [
                "retrain", "run", "--request", "-",
                "--repo", str(repo_copy["repo"]), "--keys", str(repo_copy["keys"]),
                "--snapshot", str(shifted_snapshot), "--base-data", str(base_data),
                "--waves", "50,100", "--soak", "0", "--min-gain", "10",
                "--work", str(tmp_path / "job"), "--json", *conn,
            ],
            stdin=json.dumps(request),
        )  # fmt: skip
        assert code == 0, err
        job = json.loads(out)
        assert job["status"] == "proposed" and job["version"] == "1.0.1" and job["parent_version"] == "1.0.0"
        trained = next(s for s in job["steps"] if s["step"] == "trained")
        assert trained["new_holdout_accuracy"] >= trained["parent_holdout_accuracy"] + 0.10

        with httpx.Client(base_url=srv.url, headers=auth, timeout=30) as c:
            assert c.get("/v1/rollouts").json() == []  # proposed, not started: it waits for approval
            rec = c.get(f"/v1/retrain/jobs/{job['id']}").json()
            assert rec["status"] == "proposed" and rec["request_id"] == request["id"]
            assert rec["rollout"]["waves"] == [50.0, 100.0]
            actions = [a["action"] for a in c.get("/v1/audit", params={"limit": 1000}).json()]
            for step in ("created", "started", "trained", "optimized", "published", "registered"):
                assert f"retrain.job.{step}" in actions, step
            assert "retrain.rollout_proposed" in actions
            assert {v["variant"] for v in c.get("/v1/releases/digits/1.0.1").json()["variants"]} == {
                "gateway",
                "sensor",
            }

        code, out, err = _cli(capsys, monkeypatch, ["retrain", "approve", job["id"], "--json", *conn])
        assert code == 0, err
        approved = json.loads(out)
        assert approved["status"] == "completed" and approved["rollout_id"]
        code, out, err = _cli(capsys, monkeypatch, ["retrain", "approve", job["id"], *conn])
        assert code == 1 and "not waiting for approval" in err  # approving twice starts nothing
        with httpx.Client(base_url=srv.url, headers=auth, timeout=30) as c:
            rollouts = c.get("/v1/rollouts").json()
            assert [(r["id"], r["version"]) for r in rollouts] == [(approved["rollout_id"], "1.0.1")]
            assert rollouts[0]["waves"] == [50.0, 100.0]

        code, out, err = _cli(capsys, monkeypatch, ["release", "lineage", "digits", "1.0.1", "--json", *conn])
        assert code == 0, err
        chain = json.loads(out)["chain"]
        snap = load_snapshot(shifted_snapshot)
        assert [n["version"] for n in chain] == ["1.0.1", "1.0.0"]
        new, parent = chain
        assert new["parent_version"] == "1.0.0" and new["data_snapshot"] == snap.sha256
        assert new["labels_used"] == 300 and new["label_counts"] == snap.labels
        assert new["retrain_job"] == job["id"] and new["retrain_request"] == request["id"]
        assert new["job"]["rollout_id"] == approved["rollout_id"]
        assert {v["variant"]: v["optimization"]["max_drop"] for v in new["variants"]} == {
            "gateway": 2.0,
            "sensor": 2.0,
        }
        assert parent["parent_version"] is None and parent["dataset_sha256"] == "ab" * 32
        code, out, err = _cli(capsys, monkeypatch, ["release", "lineage", "digits", "1.0.1", *conn])
        assert code == 0 and "1.0.1" in out and snap.sha256[:16] in out and job["id"] in out
        code, out, err = _cli(capsys, monkeypatch, ["release", "lineage", "digits", "9.9.9", *conn])
        assert code == 1 and "not published" in err


def test_bad_job_reports_are_refused_and_nothing_is_recorded(tmp_path, repo_copy):
    cfg = ServerConfig(data_dir=tmp_path / "server", repo_dir=repo_copy["repo"], keys_dir=repo_copy["keys"])
    with start_server(cfg) as srv:
        auth = {"Authorization": f"Bearer {cfg.admin_token_path.read_text().strip()}"}
        with httpx.Client(base_url=srv.url, headers=auth, timeout=30) as c:
            good = {"name": "digits", "parent_version": "1.0.0", "version": "1.0.1"}
            for path, body, status in [
                ("/v1/retrain/jobs/not-hex", good, 422),
                ("/v1/retrain/jobs/0123456789abcdef", {**good, "extra": 1}, 422),
                ("/v1/retrain/jobs/0123456789abcdef", {**good, "snapshot": {"x": "y" * 20000}}, 422),
                ("/v1/retrain/jobs/0123456789abcdef", {**good, "rollout": {"waves": [50, 10]}}, 400),
            ]:
                r = c.put(path, json=body)
                assert r.status_code in (status, 400, 422) and r.json()["message"], (path, r.text)
            assert c.get("/v1/retrain/jobs").json() == []
            r = c.post("/v1/retrain/jobs/0123456789abcdef/steps", json={"step": "trained"})
            assert r.status_code == 404 and "edgefleet retrain status" in r.json()["hint"]
            assert c.put("/v1/retrain/jobs/0123456789abcdef", json=good).status_code == 201
            assert c.put("/v1/retrain/jobs/0123456789abcdef", json=good).status_code == 409
            r = c.post("/v1/retrain/jobs/0123456789abcdef/steps", json={"step": "Bad Step!"})
            assert r.status_code == 422
            r = c.post("/v1/retrain/jobs/0123456789abcdef/approve")
            assert r.status_code == 409 and "not waiting for approval" in r.json()["message"]
            r = httpx.get(f"{srv.url}/v1/retrain/jobs", timeout=10)
            assert r.status_code == 401
