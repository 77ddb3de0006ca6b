"""`edgefleet sim regional-outage` with a real partition: region eu's devices run in a worker process inside
a network namespace joined by a veth pair, and the outage sets the link down (skipped, saying why, where
namespaces cannot be made; tests/sim runs the same scenario through the fault-injecting proxy)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from nettools import why_no_netns

from edgefleet.sim._scenario import load_scenario
from edgefleet.sim._simreport import check
from edgefleet.sim._simrun import run_scenario

pytestmark = pytest.mark.slow


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """A report folder whose work/ keeps the trained releases for both tests (the CLI's --out)."""
    return tmp_path_factory.mktemp("netns-sim")


def test_regional_outage_cuts_a_namespace_link_and_the_rollout_completes(out):
    why = why_no_netns()
    if why:
        pytest.skip(why)
    sc = load_scenario("regional-outage")
    result = run_scenario(sc, work=out / "work", partitions="netns")
    assert not check(sc, result), check(sc, result)
    assert result["partitions_via"] == "ip netns"
    eu = [w for w in result["workers"] if w["netns"]]
    assert len(eu) == 1 and eu[0]["process"] and eu[0]["devices"] == sc.devices // 2
    part = next(f for f in result["faults"] if f["kind"] == "partition")
    assert part["region"] == "eu" and "veth" in part["via"]
    # a real cut: the region's devices got (next to) no answers while the link was down (each could
    # have one answer in flight), where they would have sent ~devices x for_s / poll_interval_s
    assert part["heartbeats_answered_while_cut"] <= part["devices"], part
    # no proxy in the way: eu's devices talked to the server across the veth
    assert result["proxies"].get("eu", {}).get("connections", 0) == 0
    print(part)
    # the rollout completed when eu came back; no device bricked; nothing double-counted
    assert result["rollout"]["state"] == "completed"
    assert result["final_versions"][sc.candidate.version] == sc.devices
    assert result["without_version"] == 0 and result["rollout"]["members_total"] == sc.devices
    assert f"efsim{os.getpid()}x" not in _namespaces()  # cleaned up


def test_the_namespace_is_removed_when_the_run_is_interrupted(out):
    why = why_no_netns()
    if why:
        pytest.skip(why)
    # a run stopped with SIGINT mid-way (the CLI turns SIGTERM into the same) leaves no namespace behind
    code = (
        "import sys; from edgefleet.cli import main; sys.argv = ['edgefleet', 'sim', 'regional-outage', "
        f"'--out', {str(out)!r}, '--partitions', 'netns', '--json']; main()"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import time

        deadline = time.monotonic() + 180
        while f"efsim{p.pid}x" not in _namespaces():
            assert p.poll() is None, p.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no namespace appeared"
            time.sleep(0.3)
        p.terminate()
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
    assert f"efsim{p.pid}x" not in _namespaces()
