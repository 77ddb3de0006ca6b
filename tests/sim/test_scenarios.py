"""The shipped fleet scenarios, each run at a small size against a real server, asserting its outcome.

Each scenario's own ``expect`` is checked by ``check`` (the same verdict ``edgefleet sim`` prints); the
tests add what the scenario is about, read from the run itself.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgefleet.errors import ConfigError
from edgefleet.sim._scenario import load_scenario, shipped_scenarios
from edgefleet.sim._simreport import check, peak_over_mean, write_report
from edgefleet.sim._simrun import run_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("simwork")  # the trained releases are shared by the scenarios


def _run(name: str, work, **update):
    sc = load_scenario(name).model_copy(update=update)
    result = run_scenario(sc, work=work)
    return sc, result, check(sc, result)


def test_shipped_scenarios_are_all_there_and_valid():
    names = shipped_scenarios()
    assert {
        "good-rollout",
        "bad-release-contained",
        "regional-outage",
        "thundering-herd",
        "scale-10k",
    } <= set(names)
    for n in names:
        assert load_scenario(n).expect.rollout_state in ("completed", "rolled_back")


def test_bad_release_on_one_class_is_contained(work, tmp_path):
    sc, result, failures = _run("bad-release-contained", work)
    assert not failures, failures
    r = result["rollout"]
    assert r["state"] == "rolled_back" and {"error_rate", "confidence_ratio"} & set(r["failed_gates"])
    assert result["ever_ran_candidate"] <= r["first_wave"] + int(sc.gates["min_devices"])
    paths = write_report(sc, result, failures, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)
    assert "rolled_back" in paths[1].read_text()


def test_regional_outage_heals_and_the_rollout_completes(work):
    sc, result, failures = _run("regional-outage", work)
    assert not failures, failures
    part = next(f for f in result["faults"] if f["kind"] == "partition")
    assert part["region"] == "eu" and result["proxies"]["eu"]["by_fault"].get("partition", 0) > 0
    assert result["status_counts"].get("io_error", 0) > 0  # the devices really lost the link
    # nothing double-counted: every device ends on exactly one version, the whole fleet on the candidate
    assert sum(result["final_versions"].values()) == sc.devices


def test_thundering_herd_with_spread_nudges(work):
    sc, result, failures = _run("thundering-herd", work, devices=40)
    assert not failures, failures
    assert peak_over_mean(result) is not None


def test_good_rollout_and_scale_scenario_at_small_size(work):
    _, result, failures = _run("good-rollout", work, devices=30)
    assert not failures, failures
    sc, result, failures = _run(
        "scale-10k",
        work,
        devices=30,
        poll_interval_s=0.5,
        soak_s=1.0,
        gates={"min_devices": 2, "min_requests": 100},
    )
    assert not failures, failures
    assert result["final_versions"][sc.candidate.version] == 30


def test_a_broken_scenario_is_a_clear_error(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: x\ndevices: -3\n")
    with pytest.raises(ConfigError, match="devices"):
        load_scenario(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scenario(bad)
    with pytest.raises(ConfigError, match="no scenario"):
        load_scenario("no-such-scenario")
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "sim", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr and "not valid YAML" in out.stderr


def test_server_killed_mid_rollout_and_the_replica_takes_over(work, pg_schema_url):
    sc = load_scenario("server-failover")
    result = run_scenario(sc, work=work, database_url=pg_schema_url)
    failures = check(sc, result)
    assert not failures, failures
    kill = next(f for f in result["faults"] if f["kind"] == "kill_server")
    assert kill["killed_pid"] and kill["heartbeats_after"] > kill["heartbeats_before"]


def test_a_kill_scenario_without_postgresql_is_refused(work):
    with pytest.raises(ConfigError, match="PostgreSQL"):
        run_scenario(load_scenario("server-failover"), work=work)
