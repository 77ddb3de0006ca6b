"""Issue 14 item 2 end to end on loopback: a real control plane, real agents (Agent objects running their loop
in threads) and `edgefleet fl start --server --selector` in its own process. The job registers with the
server; the selected agents learn of it from their signed heartbeat answers and start Flower SuperNodes on
their own non-IID digits data (AgentConfig.fl_data_dir); the job improves on the base head; at its end the
server stops naming it and the agents leave. An agent whose device state forbids training (a scripted battery
trace at 20 % on battery, a stand-in for a phone's battery) declines and says why; an agent outside the
selector is never asked."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from edgefleet.agent import Agent, AgentConfig, enroll
from edgefleet.client import Client
from edgefleet.federated._data import digits_federation
from edgefleet.server import ServerConfig, start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def _events(agent: Agent, kind: str) -> list[dict]:
    return [e for e in list(agent.journal.state.history) if e["event"] == kind]


def test_agents_join_the_job_the_control_plane_names_and_leave_when_it_ends(tmp_path, published):
    folders, base, (x_eval, y_eval), _ = digits_federation(4, tmp_path / "data", seed=1)
    np.savez(tmp_path / "base.npz", W=base.W, b=base.b)
    np.savez(tmp_path / "eval.npz", x=x_eval, y=y_eval)
    empty_sys = tmp_path / "sys"  # a device tree with nothing in it: no battery, no pressure, link unknown
    empty_sys.mkdir()
    low = tmp_path / "low-battery.yaml"
    low.write_text(yaml.safe_dump([{"t": 0, "battery_percent": 20, "power_source": "battery"}]))
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        engine_tick_s=0.1,
        poll_interval_s=0.5,
    )
    with start_server(cfg) as srv, Client(srv.url, token=srv.admin_token) as api:
        agents: list[Agent] = []
        for i, (region, state) in enumerate(
            [("eu", f"sysfs:{empty_sys}")] * 3 + [("eu", f"scripted:{low}"), ("us", f"sysfs:{empty_sys}")]
        ):
            conf = AgentConfig(
                state_dir=tmp_path / f"agent{i}",
                request_timeout_s=10,
                device_state=state,
                fl_data_dir=folders[min(i, 3)],
            )
            token = api.create_enrollment_token(tags={"region": region})["token"]
            enroll(
                conf,
                token=token,
                root_json=published / "repo" / "metadata" / "1.root.json",
                server_url=srv.url,
            )
            agents.append(Agent(conf))
        threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
        for t in threads:
            t.start()
        job_dir = tmp_path / "job"
        try:
            start = subprocess.run(
                [sys.executable, "-m", "edgefleet.cli", "fl", "start", str(job_dir), "--job-id", "digits-eu",
                 "--base-head", str(tmp_path / "base.npz"), "--eval-data", str(tmp_path / "eval.npz"),
                 "--rounds", "3", "--clients-per-round", "3", "--min-clients", "3", "--local-epochs", "2",
                 "--learning-rate", "0.5", "--deadline", "2m", "--timeout", "6m", "--json",
                 "--server", srv.url, "--token", srv.admin_token, "--selector", "region=eu"],
                capture_output=True, text=True, timeout=420,
            )  # fmt: skip
            assert start.returncode == 0, start.stderr[-3000:]
            result = json.loads(start.stdout)
            rounds = [e for e in result["events"] if e["event"] == "round"]
            assert [r["answered"] for r in rounds] == [3, 3, 3] and all(r["aggregated"] for r in rounds)
            base_accuracy = base.accuracy(x_eval, y_eval)
            final = result["events"][-1]
            assert final["event"] == "finished" and final["participants"] == 3
            assert final["accuracy"] > base_accuracy + 0.05, (base_accuracy, final["accuracy"])

            job = api.fl_job("digits-eu")  # what the control plane recorded: rounds and the end
            assert job["state"] == "finished" and job["selector"] == "region=eu"
            assert [r["answered"] for r in job["rounds"]] == [3, 3, 3]
            assert job["accuracy"] == pytest.approx(final["accuracy"])
            assert job["spec"]["rounds"] == 3

            # the job ended: the answers no longer name it and every agent that joined leaves, saying why
            joined = agents[:3]
            for a in joined:
                _wait_for(lambda a=a: _events(a, "fl_left"), 60, "an agent left the ended job")
                (j,) = _events(a, "fl_joined")
                assert j["job"] == "digits-eu" and j["samples"] > 0
                assert _events(a, "fl_left")[0]["reason"] == "the control plane no longer names the job"
                assert a.fl_node is None
            # the device on battery at 20 % was named but declined; the one outside the selector never heard
            (declined,) = _events(agents[3], "fl_declined")
            assert "on battery at 20%" in declined["reason"] and not _events(agents[3], "fl_joined")
            assert not _events(agents[4], "fl_declined") and not _events(agents[4], "fl_joined")
            assert api.device(agents[3].creds.device_id)["resources"]["battery_percent"] == 20
        finally:
            for a in agents:
                a.stop_event.set()
            for t in threads:
                t.join(60)
    import psutil

    left = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))
    ]
    assert not left, left


def test_fl_start_refuses_a_bad_selector_before_starting_anything(tmp_path):
    np.savez(tmp_path / "base.npz", W=np.zeros((4, 2), np.float32), b=np.zeros(2, np.float32))
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "fl", "start", str(tmp_path / "job"), "--job-id", "x",
         "--base-head", str(tmp_path / "base.npz"), "--server", "http://127.0.0.1:9", "--selector", "region"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "selector term" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "job").exists()


def test_an_agent_leaves_the_job_when_its_battery_runs_low_and_stops_its_supernode(tmp_path, published):
    """A real server and agent; the job's SuperLink is an address nobody listens on (the SuperNode keeps
    retrying, as Flower's does). The scripted power trace (a stand-in for a battery) goes from mains to 20 %
    on battery: the agent leaves, says why, and its SuperNode process is gone."""
    import psutil

    folders, _, _, _ = digits_federation(1, tmp_path / "data")
    trace = tmp_path / "trace.yaml"
    trace.write_text(
        yaml.safe_dump(
            [
                {"t": 0, "battery_percent": 100, "power_source": "ac"},
                {"t": 20, "battery_percent": 20, "power_source": "battery"},
            ]
        )
    )
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        engine_tick_s=0.1,
        poll_interval_s=0.5,
    )
    with start_server(cfg) as srv, Client(srv.url, token=srv.admin_token) as api:
        conf = AgentConfig(
            state_dir=tmp_path / "agent", request_timeout_s=10, device_state=f"scripted:{trace}",
            fl_data_dir=folders[0],
        )  # fmt: skip
        token = api.create_enrollment_token(tags={"region": "eu"})["token"]
        enroll(
            conf, token=token, root_json=published / "repo" / "metadata" / "1.root.json", server_url=srv.url
        )
        agent = Agent(conf)
        from edgefleet.federated._process import free_port

        api.create_fl_job("far", f"127.0.0.1:{free_port()}", duration_s=600, selector="region=eu")
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        try:
            (joined,) = _wait_for(lambda: _events(agent, "fl_joined"), 60, "the agent joined")
            assert joined["job"] == "far" and joined["samples"] > 0
            node_pid = agent.fl_node._proc.pid
            assert psutil.pid_exists(node_pid)
            (left,) = _wait_for(lambda: _events(agent, "fl_left"), 90, "the agent left on a low battery")
            assert left["reason"] == "on battery at 20% (< 50%)"
            assert agent.fl_node is None
            _wait_for(lambda: not psutil.pid_exists(node_pid) or psutil.Process(node_pid).status() == "zombie", 30,
                      "the SuperNode stopped")  # fmt: skip
            # still named, still on a low battery: declined once, not re-joined every pass
            (declined,) = _wait_for(lambda: _events(agent, "fl_declined"), 30, "declined while named")
            assert declined["reason"] == left["reason"]
            beats = {agent._last_beat}  # four more heartbeats (loop passes): nothing new in the journal
            _wait_for(lambda: beats.add(agent._last_beat) or len(beats) > 4, 60, "four more passes")
            assert len(_events(agent, "fl_declined")) == 1 and len(_events(agent, "fl_joined")) == 1
            assert agent.fl_status() == {"job": "far", "joined": False, "declined": left["reason"]}
        finally:
            agent.stop_event.set()
            thread.join(60)


def test_an_operator_stops_a_running_job_and_fl_start_ends_it(tmp_path):
    """`fl start --server` runs a job no device joins; an operator stops it on the control plane
    (`edgefleet fl stop`'s call); `fl start` sees it within seconds, stops its SuperLink and says so."""
    import psutil

    from edgefleet.federated._process import free_port

    folders, base, (x_eval, y_eval), _ = digits_federation(1, tmp_path / "data")
    np.savez(tmp_path / "base.npz", W=base.W, b=base.b)
    cfg = ServerConfig(data_dir=tmp_path / "server", keys_dir=tmp_path / "nokeys", engine_enabled=False)
    with start_server(cfg) as srv, Client(srv.url, token=srv.admin_token) as api:
        port = free_port()
        start = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "fl", "start", str(tmp_path / "job"), "--job-id", "idle",
             "--base-head", str(tmp_path / "base.npz"), "--rounds", "2", "--clients-per-round", "3",
             "--deadline", "10m", "--port", str(port), "--json", "--server", srv.url, "--token", srv.admin_token,
             "--selector", "region=nowhere"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _wait_for(
                lambda: api.fl_jobs() and api.fl_jobs()[0]["state"] == "running", 120, "the job registered"
            )
            assert api.fl_job("idle")["superlink"] == f"127.0.0.1:{port}"
            api.stop_fl_job("idle", reason="no devices in that region")
            _, stderr = start.communicate(timeout=90)
        finally:
            start.kill()
        assert start.returncode != 0 and "was stopped on the control plane" in stderr, stderr[-2000:]
        assert "Traceback" not in stderr
        job = api.fl_job("idle")
        assert job["state"] == "stopped" and job["reason"] == "no devices in that region"
    left = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if f"127.0.0.1:{port}" in " ".join(p.info["cmdline"] or []) or str(tmp_path / "job") in " ".join(p.info["cmdline"] or [])
    ]  # fmt: skip
    assert not left, left
