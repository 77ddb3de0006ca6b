"""``edgefleet demo --story federated`` end to end (issue 14): the devices train the model on data that never
leaves them, and the federated release goes out through gated waves.

The demo runs as a subprocess (4 devices, TLS on as by default); the test reads its JSON summary and checks
each link against the records left in its state folder: the job in the control plane's database and audit
log, the agents' journals (three joined and left, the one on a 30 % battery declined), the job's rounds, the
published release (each base variant optimized with the base's budget; lineage without device ids) and the
rollout that reached every device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from readmetext import readme_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    d = tmp_path_factory.mktemp("federated") / "state"
    p = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", *readme_command("edgefleet demo --story federated"),
         "--dir", str(d), "--devices", "4", "--json"],
        capture_output=True, text=True, timeout=560, env={**os.environ, "COLUMNS": "160"}, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout), d


def test_the_federated_release_beats_the_base_on_the_fleets_answers(fed_run):
    s, _ = fed_run
    assert s["ok"] and s["story"] == "federated"
    before, after = s["accuracy"]["before"], s["accuracy"]["after"]
    assert (before["version"], after["version"]) == ("1.0.0", "1.1.0")
    assert before["answers"] >= 300 and after["answers"] >= 300
    assert after["accuracy"] > before["accuracy"] + 0.05, (before, after)
    job = s["federated_job"]
    assert job["state"] == "finished" and job["participants"] == 3
    assert [r["round"] for r in job["rounds"]] == [1, 2, 3, 4, 5]
    assert all(r["answered"] >= 2 and r["aggregated"] for r in job["rounds"])
    assert job["accuracy_final"] > job["accuracy_base"] + 0.05


def test_each_link_of_the_federated_story_is_on_record(fed_run):
    import sqlalchemy as sa

    from edgefleet.bundle import Bundle

    s, d = fed_run
    # the agents decided for themselves: three joined and left at the job's end, one declined on its battery
    joined, declined = s["participation"]["joined"], s["participation"]["declined"]
    assert len(joined) == 3 and len(declined) == 1 and "on battery at 30%" in declined[0]
    for dev in s["devices"]:
        history = json.loads((Path(dev["state_dir"]) / "journal.json").read_text())["history"]
        kinds = [e["event"] for e in history if e.get("job") == "digits-fleet"]
        if dev["name"] in joined:
            # Flower over TLS: each sent its per-job SuperNode key first and joined once fl start registered it
            assert kinds[:1] == ["fl_key_sent"] and "fl_left" in kinds, kinds
            assert [k for k in kinds if k != "fl_key_sent"][:1] == ["fl_joined"], kinds
            assert next(e for e in history if e["event"] == "fl_joined")["tls"] is True
        else:
            assert kinds == ["fl_declined"], kinds
    # the control plane's records: the job (registered by fl start --server, its rounds, its end) and audit
    engine = sa.create_engine(f"sqlite:///{d / 'server' / 'edgefleet.sqlite'}")
    with engine.connect() as c:
        state, rounds, selector = c.execute(
            sa.text("SELECT state, rounds, selector FROM fl_jobs WHERE id = 'digits-fleet'")
        ).one()
        actions = [
            r[0]
            for r in c.execute(sa.text("SELECT action FROM audit WHERE action LIKE 'fl_job.%' ORDER BY id"))
        ]
    assert state == "finished" and selector == "*" and len(json.loads(rounds)) == 5
    superlink = (d / "fl-job" / "superlink.log").read_text()
    assert (
        "Uvicorn running on https://" in superlink and superlink.count("[Fleet.ActivateNode] Activated") >= 3
    )
    assert actions == ["fl_job.start", "fl_job.finished"]
    # the release: each of v1.0.0's variants optimized with v1.0.0's budget; the bundle ships the optimizer's
    # choice, says why the others lost, carries the job's lineage and no device id anywhere in its manifest
    from edgefleet.registry import KeyStore, Repository

    repo = Repository(d / "repository", KeyStore(d / "keys" / "publisher"))
    base = {b.variant: b for b in repo.list_versions("digits") if b.version == "1.0.0"}
    new = {b.variant: b for b in repo.list_versions("digits") if b.version == "1.1.0"}
    assert set(new) == set(base) and len(new) == 2, (set(new), set(base))
    for variant, pub in new.items():
        report = json.loads((d / "fl-release" / "optimize" / variant / "report.json").read_text())
        parent_opt = repo.show("digits", "1.0.0", variant).manifest.lineage.optimization
        assert report["budget"]["max_drop"] == parent_opt["max_drop"]
        assert report["objective"] == parent_opt["objective"]
        with Bundle.open(repo.target_file(pub.target_path)) as bundle:
            m = bundle.manifest
            assert (m.version, m.lineage.parent_version) == ("1.1.0", "1.0.0")
            opt = m.lineage.optimization
            assert opt["variant"] == report["chosen"] and opt["parent_variant"] == parent_opt["variant"]
            assert {c["variant"] for c in opt["candidates"]} == {"fp32", parent_opt["variant"]}
            assert all(c["why"] for c in opt["candidates"])
            tags = m.lineage.tags
            assert tags["federated_job"] == "digits-fleet" and tags["participants"] == "3"
            assert tags["rounds"] == "5" and "epsilon" not in tags  # no DP in the story
            assert s["federated_release"]["variants"][variant]["chosen"] == opt["variant"]
            text = m.model_dump_json()
        assert not any(dev["id"] in text for dev in s["devices"])
    # the gated rollout reached every device, each wave judged against the control group or baseline
    ro = next(r for r in s["rollouts"] if r["version"] == "1.1.0")
    assert ro["state"] == "completed" and [w["result"] for w in ro["wave_results"]] == ["passed"] * 3
    assert s["processes"]["running"] == []
