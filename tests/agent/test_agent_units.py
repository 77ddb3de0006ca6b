"""Smaller pieces: enrollment errors, loop timing helpers, journal, MQTT nudge, CLI, systemd unit."""

from __future__ import annotations

import configparser
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from _standin import ENROLL_TOKEN, StandIn
from agenttools import assert_valid_active, run_until

from edgefleet.agent import AgentConfig, Journal, enroll
from edgefleet.agent._agent import backoff_delay, jittered
from edgefleet.errors import AuthError, ConfigError, VerificationError


def test_jitter_stays_within_bounds_and_varies():
    rng = random.Random(1)
    xs = [jittered(10.0, 0.2, rng) for _ in range(500)]
    assert min(xs) >= 8.0 and max(xs) <= 12.0
    assert len({round(x, 3) for x in xs}) > 100


def test_backoff_grows_with_failures_and_is_capped():
    rng = random.Random(2)
    first = [backoff_delay(1, 1.0, 60.0, rng) for _ in range(200)]
    later = [backoff_delay(10, 1.0, 60.0, rng) for _ in range(200)]
    assert max(first) <= 1.0 and min(first) >= 0.5
    assert min(later) >= 30.0 and max(later) <= 60.0


def test_journal_survives_and_rejects_garbage(tmp_path):
    j = Journal(tmp_path / "journal.json")
    j.state.active = "a" * 64
    j.save()
    assert Journal(tmp_path / "journal.json").state.active == "a" * 64
    assert not list(tmp_path.glob(".journal.json.tmp-*"))
    (tmp_path / "journal.json").write_text(json.dumps({"schema_version": 99}))
    j2 = Journal(tmp_path / "journal.json")
    assert j2.state.active is None and "newer" in j2.state.last_error
    assert list(tmp_path.glob("journal.json.unreadable-*"))


def test_enroll_with_bad_token_writes_nothing(tmp_path, repo_template):
    s = StandIn(repo_template / "repo").start()
    try:
        cfg = AgentConfig(state_dir=tmp_path / "state")
        with pytest.raises(AuthError):
            enroll(
                cfg,
                token="wrong-token-123",
                root_json=repo_template / "repo" / "metadata" / "1.root.json",
                server_url=s.url,
            )
        assert not (tmp_path / "state" / "credentials.json").exists()
        with pytest.raises(VerificationError, match="not TUF root metadata"):
            enroll(cfg, token=ENROLL_TOKEN, root_json=b'{"signed": {"_type": "root"}}', server_url=s.url)
        # a valid root.json of another repository: refused before anything is stored (test_enroll_trust)
        from edgefleet.registry import Repository, init_keys

        other = Repository.init(
            tmp_path / "other", init_keys(tmp_path / "okeys", root_keys=1, root_threshold=1)
        )
        with pytest.raises(VerificationError, match="does not verify from the given root"):
            enroll(cfg, token=ENROLL_TOKEN, root_json=other.root_json_path, server_url=s.url)
    finally:
        s.stop()
    assert not (tmp_path / "state" / "credentials.json").exists()


def test_agent_without_credentials_says_how_to_enroll(tmp_path):
    from edgefleet.agent import Agent

    with pytest.raises(ConfigError, match="not enrolled") as e:
        Agent(AgentConfig(state_dir=tmp_path))
    assert "agent enroll" in e.value.hint


def _polls_after_a_nudge(world, mqtt_url, message: dict) -> bool:
    """Whether an agent polling every 60 s polls again after an MQTT nudge carrying ``message``."""
    import paho.mqtt.client as mqtt

    a = world.agent(start=False, mqtt_url=mqtt_url)
    world.standin.poll_interval_s = 60.0
    t = threading.Thread(target=a.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while len(world.standin.heartbeats) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # let the subscription settle
        n = len(world.standin.heartbeats)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", 1883)
        c.loop_start()
        c.publish(
            f"edgefleet/devices/{a.creds.device_id}/nudge", json.dumps(message), qos=1
        ).wait_for_publish()
        deadline = time.monotonic() + 30
        while len(world.standin.heartbeats) == n and time.monotonic() < deadline:
            time.sleep(0.05)
        c.loop_stop()
        return len(world.standin.heartbeats) > n
    finally:
        a.stop_event.set()
        t.join(timeout=20)


def test_mqtt_nudge_makes_the_agent_poll_now(world, mqtt_url):
    assert _polls_after_a_nudge(world, mqtt_url, {"poll": True}), "no poll after the nudge (interval is 60 s)"


def test_a_nudge_s_spread_is_read_defensively():
    """``within_s``: poll at a uniform moment within it (capped); anything else a nudge may carry —
    nothing, garbage, a list, a string, NaN, infinity, a negative or oversized message — is "poll now"."""
    import random

    from edgefleet.agent._nudge import MAX_SPREAD_S, nudge_delay
    from edgefleet.server._notify import nudge_payload

    rng = random.Random(7)
    delays = [nudge_delay(nudge_payload(10.0), rng) for _ in range(500)]
    assert all(0.0 <= d <= 10.0 for d in delays)
    assert min(delays) < 1.0 and max(delays) > 9.0  # spread over the whole window, not bunched
    assert nudge_delay(nudge_payload(0.0), rng) == 0.0
    assert nudge_delay(b'{"poll": true, "within_s": 1e9}', rng) <= MAX_SPREAD_S
    for bad in (
        b"",
        b"not json",
        b"[1, 2]",
        b'{"within_s": "soon"}',
        b'{"within_s": NaN}',
        b'{"within_s": Infinity}',
        b'{"within_s": -5}',
        b'{"within_s": null}',
        b'{"within_s": 5, "pad": "' + b"x" * 2000 + b'"}',
    ):
        assert nudge_delay(bad, rng) == 0.0, bad


def test_a_spread_nudge_makes_the_agent_poll_within_its_spread(world, mqtt_url):
    polled = _polls_after_a_nudge(world, mqtt_url, {"poll": True, "within_s": 2})
    assert polled, "no poll within the nudge's spread (interval is 60 s)"


def test_cli_rollback_asks_the_running_agent(world, tmp_path):
    a = world.agent()
    world.install(a, "1.0.0")
    world.install(a, "1.1.0")
    a.close()
    world.agents.remove(a)
    env = {**os.environ, "EDGEFLEET_AGENT_STATE_DIR": str(world.state)}
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - lives as long as the process
    p = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--no-progress"],
        env=env,
        stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            j = json.loads((world.state / "journal.json").read_text())
            if any(e["event"] == "replayed" for e in j["history"][-3:]):
                break
            time.sleep(0.05)
        r = subprocess.run(
            [sys.executable, "-m", "edgefleet.cli", "agent", "rollback", "--version", "1.0.0", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["rolled_back_to"] == "1.0.0" and out["via"] == "running agent"
        r = subprocess.run(
            [sys.executable, "-m", "edgefleet.cli", "agent", "rollback", "--version", "0.0.9"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert r.returncode == 1 and "not kept" in r.stderr and "Traceback" not in r.stderr
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    assert p.returncode == 0
    assert_valid_active(world.state, world.sha("1.0.0"))


def test_cli_rollback_without_running_agent(world):
    a = world.agent()
    world.install(a, "1.0.0")
    world.install(a, "1.1.0")
    a.close()
    world.agents.remove(a)
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "agent", "rollback", "--state", str(world.state), "--json"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["via"] == "direct"
    assert_valid_active(world.state, world.sha("1.0.0"))
    b = world.agent()  # a fresh start serves the rolled-back version
    assert b.host.model_key == "digits/1.0.0/cpu"
    run_until(b, lambda: len(world.standin.heartbeats) > 0)


def test_systemd_unit_is_shipped_and_sane():
    from edgefleet.agent import SYSTEMD_UNIT

    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "agent", "unit"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout == SYSTEMD_UNIT.read_text()
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read_string(SYSTEMD_UNIT.read_text())
    svc = cp["Service"]
    assert svc["ExecStart"].endswith("edgefleet agent run")
    assert svc["Restart"] == "always"
    assert "EDGEFLEET_AGENT_STATE_DIR=/var/lib/edgefleet" in svc["Environment"]
    assert cp["Install"]["WantedBy"] == "multi-user.target"
