"""The shipped fleet scenarios, each run at a small size against a real server, asserting its outcome.

Each scenario's own ``expect`` is checked by ``check`` (the same verdict ``edgefleet sim`` prints); the
tests add what the scenario is about, read from the run itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from edgefleet.errors import ConfigError
from edgefleet.sim._scenario import load_scenario, shipped_scenarios
from edgefleet.sim._simreport import check, peak_over_mean, write_report
from edgefleet.sim._simrun import run_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("simwork")  # the trained releases are shared by the scenarios


def _run(name: str, work, partitions: str = "auto", workers: int | None = None, **update):
    sc = load_scenario(name).model_copy(update=update)
    result = run_scenario(sc, work=work, partitions=partitions, workers=workers)
    return sc, result, check(sc, result)


def test_shipped_scenarios_are_all_there_and_valid():
    names = shipped_scenarios()
    assert {
        "good-rollout",
        "bad-release-contained",
        "regional-outage",
        "thundering-herd",
        "scale-10k",
        "drift-in-one-region",
        "crash-loop",
        "skewed-and-flaky-devices",
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
    # the proxy's partition (tests/net runs it with a network namespace where that is permitted)
    sc, result, failures = _run("regional-outage", work, partitions="proxy")
    assert not failures, failures
    assert result["partitions_via"] == "fault-injecting proxy"
    part = next(f for f in result["faults"] if f["kind"] == "partition")
    assert part["region"] == "eu" and result["proxies"]["eu"]["by_fault"].get("partition", 0) > 0
    assert result["status_counts"].get("io_error", 0) > 0  # the devices really lost the link
    # the loss fault hit the keep-alive connections already open, not only new ones
    loss = next(f for f in result["faults"] if f["kind"] == "loss")
    assert loss["chunks_stalled"] > 0, loss
    assert result["without_version"] == 0 and result["rollout"]["members_total"] == sc.devices
    # nothing double-counted: every device ends on exactly one version, the whole fleet on the candidate
    assert sum(result["final_versions"].values()) == sc.devices


def test_thundering_herd_with_spread_nudges(work):
    sc, result, failures = _run("thundering-herd", work, devices=40)
    assert not failures, failures
    assert peak_over_mean(result) is not None


def test_good_rollout_and_scale_scenario_at_small_size(work):
    _, result, failures = _run("good-rollout", work, devices=30)
    assert not failures, failures
    # two worker processes (what a large fleet gets); the latency goal is the benchmark's, not asserted here
    expect = load_scenario("scale-10k").expect.model_copy(update={"max_p99_ms": None})
    sc, result, failures = _run(
        "scale-10k",
        work,
        workers=2,
        devices=30,
        poll_interval_s=0.5,
        soak_s=1.0,
        gates={"min_devices": 2, "min_requests": 100},
        expect=expect,
    )
    assert not failures, failures
    assert result["final_versions"][sc.candidate.version] == 30
    assert [w["devices"] for w in result["workers"]] == [15, 15] and all(
        w["process"] for w in result["workers"]
    )
    assert result["heartbeats"] > 0 and result["overall"]["server_requests"] > 0


def test_a_rollout_runs_from_the_jobs_process(work, tmp_path):
    """``edgefleet sim good-rollout --server-process``: the server as ``server run`` runs by default runs
    it, the rollout engine's ticks in a process of their own and the devices' requests served by another."""
    import json

    out = tmp_path / "report"
    out.mkdir()
    (out / "work").symlink_to(work)  # the releases the other scenarios trained
    cmd = [sys.executable, "-m", "edgefleet.cli", "sim", "good-rollout", "--devices", "20", "--workers", "1"]
    p = subprocess.run(
        [*cmd, "--server-process", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0 and json.loads(p.stdout)["passed"], (p.stdout, p.stderr[-3000:])
    result = json.loads((out / "report.json").read_text())
    assert result["setup"]["server"] == "uvicorn process and a jobs process"
    assert result["rollout"]["state"] == "completed" and result["final_versions"]["1.1.0"] == 20


def test_drift_in_one_region_alerts_for_that_region_only(work, tmp_path):
    sc, result, failures = _run("drift-in-one-region", work)
    assert not failures, failures
    tel = result["telemetry"]
    assert tel["windows_sent"] > 0 and set(tel["uploads"]) == {"200"}  # real windows, every one accepted
    drift = [a for a in result["alerts"] if a["rule"] == "drift"]
    assert drift and {a["subject"]["region"] for a in drift} == {"eu"}
    fault = next(f for f in result["faults"] if f["kind"] == "drift")
    assert fault["windows_shifted"] > 0 and fault["devices_drifting"] == sc.devices // 2
    assert "drift alerts open for regions: eu" in fault["did"]
    paths = write_report(sc, result, failures, tmp_path)
    assert "input drift" in paths[1].read_text()


def test_a_release_that_crash_loops_on_one_class_is_rolled_back(work, tmp_path):
    """The candidate crashes on start on the pi4 class: those devices restart, roll themselves back (the
    agent's crash-loop rule), report it, and the install-failure gate rolls the rollout back."""
    sc, result, failures = _run("crash-loop", work)
    assert not failures, failures
    crash = next(f for f in result["faults"] if f["kind"] == "crash_loop")
    assert crash["crashed"] >= 1 and crash["rolled_themselves_back"] == crash["crashed"]
    assert crash["restarts"] == 3 * crash["crashed"]  # the assignment's crash_loop_failures
    assert "install_failure_rate" in result["rollout"]["failed_gates"]
    assert "rolled themselves back" in crash["did"]
    paths = write_report(sc, result, failures, tmp_path)  # a fault lasting to the end is drawn to the end
    assert crash["did"] in paths[1].read_text()


def test_clock_skew_and_devices_offline_mid_update_change_nothing(work):
    """One region's clocks run an hour ahead, the other's two minutes behind, and devices that start a
    download vanish for two seconds: the good rollout completes, every device ends on it exactly once."""
    sc, result, failures = _run("skewed-and-flaky-devices", work)
    assert not failures, failures
    eu, us = (f for f in result["faults"] if f["kind"] == "clock_skew")
    assert eu["errors"] == 0 and eu["heartbeats_answered"] > 0 and eu["ended_on_final"] == eu["devices"]
    assert us["errors"] == 0 and us["ended_on_final"] == us["devices"]
    off = next(f for f in result["faults"] if f["kind"] == "offline_mid_update")
    assert off["vanished"] > 0 and off["came_back"] == off["vanished"] == off["ended_on_final"]
    # nothing double-counted: each device once, on the candidate; the rollout counted each device once
    assert result["final_versions"] == {sc.baseline.version: 0, sc.candidate.version: sc.devices}
    assert result["rollout"]["members_total"] == sc.devices
    # an hour ahead is past the server's window clock tolerance: those windows are refused (422), the
    # ones two minutes behind are accepted; heartbeats carry no time the server trusts
    assert (
        result["telemetry"]["uploads"].get("422", 0) > 0 and result["telemetry"]["uploads"].get("200", 0) > 0
    )


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
    drift = Path(str(resources.files("edgefleet.sim") / "scenarios" / "drift-in-one-region.yaml")).read_text()
    for broken, why in (
        (drift.replace("telemetry_every_s: 1.0", "telemetry_every_s: 0"), "telemetry_every_s"),
        (drift.replace("kind: drift, region: eu", "kind: drift, region: mars"), "mars"),
        (drift.replace("kind: drift,", "kind: drift, device_class: tpu,"), "device class 'tpu'"),
        (drift.replace("kind: drift,", "kind: meteor,"), "faults.0.kind"),
        (drift.replace("drift_alert_regions: [eu]", "drift_alert_regions: [moon]"), "moon"),
    ):
        wrong = tmp_path / "drift.yaml"
        wrong.write_text(broken)
        with pytest.raises(ConfigError, match=why):
            load_scenario(wrong)
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
    assert result["setup"]["server"].startswith("two servers, each a uvicorn process and a jobs process")

    def left_of_the_killed_server() -> list[int]:  # its request and jobs processes died with it
        left = []
        for entry in Path("/proc").iterdir():
            try:
                alive = (
                    entry.name.isdigit() and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                )
                if alive and os.getpgid(int(entry.name)) == kill["killed_pid"]:
                    left.append(int(entry.name))
            except OSError:
                pass
        return left

    deadline = time.monotonic() + 60
    while left_of_the_killed_server() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left_of_the_killed_server()


def test_a_kill_scenario_without_postgresql_is_refused(work):
    with pytest.raises(ConfigError, match="PostgreSQL"):
        run_scenario(load_scenario("server-failover"), work=work)
