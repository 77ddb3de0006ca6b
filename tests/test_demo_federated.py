"""``edgefleet demo --story federated`` end to end (issue 14): the devices train the model on data that never
leaves them, and the federated release goes out through gated waves.

The demo runs as a subprocess (4 devices, TLS on as by default); the test reads its JSON summary and checks
each link against the records left in its state folder: the job in the control plane's database and audit
log, the agents' journals (three joined and left, the one on a 30 % battery declined), the job's rounds, the
published bundle's lineage (no device ids) and the rollout that reached every device.
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
            assert kinds[:1] == ["fl_joined"] and "fl_left" in kinds, kinds
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
    assert actions == ["fl_job.start", "fl_job.finished"]
    # the bundle: lineage of the job, no device ids anywhere in its manifest
    with Bundle.open(d / "bundles" / "digits-1.1.0-fp32.tar") as bundle:
        m = bundle.manifest
        assert (m.version, m.lineage.parent_version) == ("1.1.0", "1.0.0")
        assert m.lineage.tags["federated_job"] == "digits-fleet" and m.lineage.tags["participants"] == "3"
        text = m.model_dump_json()
    assert not any(dev["id"] in text for dev in s["devices"])
    # the gated rollout reached every device, each wave judged against the control group or baseline
    ro = next(r for r in s["rollouts"] if r["version"] == "1.1.0")
    assert ro["state"] == "completed" and [w["result"] for w in ro["wave_results"]] == ["passed"] * 3
    assert s["processes"]["running"] == []
