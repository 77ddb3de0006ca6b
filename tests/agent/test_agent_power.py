"""The agent obeys its device's power policy: a scripted device (the stand-in for a battery this machine
lacks) drains; the agent serves the smaller kept variant, limits the rate, defers a download, reports the
switches in its heartbeats, and goes back when the device is on mains again."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from agenttools import run_until

from edgefleet.errors import RateLimitedError


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def device_files(tmp_path):
    trace = tmp_path / "trace.yaml"
    trace.write_text(
        yaml.safe_dump(
            [
                {"t": 0, "battery_percent": 90, "power_source": "battery", "temp_c": 50, "trip_c": 85},
                {"t": 100, "battery_percent": 20},
                {"t": 200, "battery_percent": 22, "power_source": "ac"},
            ]
        )
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "min_dwell_s": 0,
                "rules": [
                    {
                        "name": "low-battery",
                        "when": {"battery_below": 30, "power_source": "battery"},
                        "actions": {"variant": "smaller", "rate_limit_rps": 0.5, "defer": ["download"]},
                    }
                ],
            }
        )
    )
    return trace, policy


def test_agent_follows_a_draining_battery(world, device_files):
    trace, policy = device_files
    agent = world.agent(device_state=f"scripted:{trace}", device_policy=str(policy))
    clock = FakeClock()
    agent.power.source.clock = clock  # the trace advances when the test says, not with the wall clock
    world.install(agent, "1.0.0")
    world.install(agent, "1.3.0")  # a larger model of the same name; 1.0.0 stays kept
    small, big = world.sha("1.0.0"), world.sha("1.3.0")
    assert agent.store.get(small).length < agent.store.get(big).length
    assert agent.host.loaded.parent.name == big or big in str(agent.host.loaded)
    x = np.zeros((1, 64), dtype=np.float32)
    for _ in range(3):
        agent.host.predict(x)  # no limit yet
    assert agent.power.switch_count == 0

    clock.t = 100  # battery 20 % on battery
    agent.run_once()
    assert agent.power.decision.active == ["low-battery"]
    assert small in str(agent.host.loaded), agent.host.loaded  # the smaller kept variant serves
    assert agent.store.current().sha256 == big  # what is installed does not change
    agent.host.predict(x)
    with pytest.raises(RateLimitedError, match="power policy"):
        agent.host.predict(x)
    world.standin.assign(world.target("1.1.0"))
    for _ in range(5):
        agent.run_once()
    assert agent.store.get(world.sha("1.1.0")) is None and agent.journal.state.pending is None
    events = [e["event"] for e in agent.journal.state.history]
    assert events.count("download_deferred") == 1 and "power_policy" in events and "power_variant" in events
    hb = world.standin.last_heartbeat()["resources"]
    assert hb["battery_percent"] == 20 and hb["power_rules"] == ["low-battery"] and hb["power_switches"] == 1

    clock.t = 200  # plugged in: the rule lets go, the big model serves again, the download goes ahead
    run_until(agent, lambda: agent.journal.state.committed == world.sha("1.1.0"), timeout=60)
    assert agent.power.decision.active == [] and agent.power.switch_count == 2
    assert agent.store.current().sha256 == world.sha("1.1.0")
    for _ in range(3):
        agent.host.predict(x)  # the limit is gone
    on = [e for e in agent.journal.state.history if e["event"] == "power_policy"]
    assert [(e["rule"], e["on"]) for e in on] == [("low-battery", True), ("low-battery", False)]
    assert world.standin.last_heartbeat()["resources"]["power_switches"] == 2


def test_agent_takes_the_policy_from_its_bundle(world, tmp_path, device_files):
    """No policy file configured and none in the bundle: state is still read and reported, nothing deferred."""
    trace, _ = device_files
    agent = world.agent(device_state=f"scripted:{trace}")
    world.install(agent, "1.0.0")
    assert agent.power.engine is None and agent.power.may("download") and agent.power.may_train()
    assert world.standin.last_heartbeat()["resources"]["battery_percent"] == 90


def test_bad_policy_file_is_a_config_error(world, tmp_path):
    from edgefleet.agent import Agent
    from edgefleet.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: x, when: {battery_below: 300}, actions: {}}]\n")
    with pytest.raises(ConfigError, match="battery_below"):
        Agent(world.config(device_policy=str(bad)))


def test_a_rule_widens_the_runtime_batching_delay_and_lets_go(world, tmp_path):
    """``batch_delay_ms``: the host's runtime batches longer while the rule is on, for a model swapped in
    meanwhile too, and goes back to its configured delay when the rule lets go."""
    from edgefleet.runtime._batcher import Batcher

    trace = tmp_path / "trace.yaml"
    trace.write_text(
        yaml.safe_dump(
            [
                {"t": 0, "battery_percent": 90, "power_source": "battery"},
                {"t": 100, "battery_percent": 20},
                {"t": 200, "battery_percent": 22, "power_source": "ac"},
            ]
        )
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "min_dwell_s": 0,
                "rules": [
                    {
                        "name": "saver",
                        "when": {"battery_below": 30, "power_source": "battery"},
                        "actions": {"batch_delay_ms": 40},
                    }
                ],
            }
        )
    )
    agent = world.agent(device_state=f"scripted:{trace}", device_policy=str(policy))
    clock = FakeClock()
    agent.power.source.clock = clock
    world.install(agent, "1.0.0")

    def delays() -> list[float]:
        rt = agent.host.runtime
        return [p.max_delay_ms for p in rt._walk(rt.pipeline) if isinstance(p, Batcher)]

    default = delays()
    assert default and all(d < 40 for d in default)
    clock.t = 100
    agent.run_once()
    assert agent.power.decision.batch_delay_ms == 40 and delays() == [40.0] * len(default)
    world.install(agent, "1.3.0")  # a new model swapped in while the rule is on keeps the wider delay
    assert delays() == [40.0] * len(default)
    clock.t = 200
    agent.run_once()
    assert agent.power.decision.active == [] and delays() == default


def test_the_policy_the_server_pushes_to_the_group_is_in_force_over_the_bundles(
    world, tmp_path, device_files
):
    """No policy file configured: the agent takes its group's policy from the real control plane with its
    telemetry, obeys it at the trace's low-battery point, and goes back to the bundle's when it is removed."""
    import dataclasses

    from fastapi.testclient import TestClient

    from edgefleet.agent._director import DirectorClient
    from edgefleet.server import ServerConfig, create_app

    trace, policy = device_files
    app = create_app(
        ServerConfig(data_dir=tmp_path / "server", keys_dir=tmp_path / "no-keys", engine_enabled=False)
    )
    tc = TestClient(app)
    admin = {"Authorization": "Bearer " + app.state.ctx.config.admin_token_path.read_text().strip()}
    tok = tc.post("/v1/enrollment-tokens", json={"tags": {"site": "field"}}, headers=admin).json()["token"]
    hw = {"arch": "x86_64", "cores": 2, "ram_mb": 4096, "disk_free_mb": 10_000, "device_class": "cpu"}
    dev = tc.post("/v1/enroll", json={"token": tok, "hardware": hw}).json()
    doc = yaml.safe_load(policy.read_text())
    r = tc.put("/v1/device-policies/field", json={"selector": "site=field", "policy": doc}, headers=admin)
    assert r.status_code == 200, r.text

    agent = world.agent(device_state=f"scripted:{trace}", telemetry_interval_s=3600)
    clock = FakeClock()
    agent.power.source.clock = clock
    world.install(agent, "1.0.0")
    world.install(agent, "1.3.0")
    agent.director.close()
    agent.director = DirectorClient("http://testserver", token=dev["device_token"], transport=tc._transport)
    agent.creds = dataclasses.replace(
        agent.creds, device_id=dev["device_id"], device_token=dev["device_token"]
    )

    agent._telemetry_sent_t = float("-inf")  # the telemetry is due: the group's policy comes with it
    agent._upload_events()
    clock.t = 100  # battery 20 % on battery
    agent._power_tick()
    assert agent.power.decision.active == ["low-battery"] and agent.power.policy_origin == "group:field"
    assert world.sha("1.0.0") in str(agent.host.loaded)  # the group's rule switched to the smaller variant

    assert tc.delete("/v1/device-policies/field", headers=admin).status_code == 200
    agent._telemetry_sent_t = float("-inf")
    agent._upload_events()
    agent._power_tick()
    assert agent.power.decision.active == [] and agent.power.policy_origin != "group:field"
    sources = [e.get("source") for e in agent.journal.state.history if e["event"] == "power_policy_source"]
    assert sources == ["group:field", "none"]
