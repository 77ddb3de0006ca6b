"""Energy per inference in the heartbeat's resources: worked out at heartbeat time from the process's CPU
time and the host's request count (x ``cpu_watts``: an estimate), or from RAPL package counters where they
are readable (a fake sysfs tree stands in: this machine's RAPL is not readable), and shown on the dashboard."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.power._energy import EnergyMeter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_energy_meter_estimate_rapl_and_resets(tmp_path):
    from tests.device.fakesys import rapl

    cpu = Clock()
    m = EnergyMeter(4.0, powercap=None, cpu_clock=cpu)
    assert m.sample(10) == {}  # the first heartbeat is the baseline
    cpu.t = 0.5
    assert m.sample(110) == {"cpu_ms_per_inference": 5.0, "energy_mj": 20.0, "energy_method": "estimate"}
    assert m.sample(110)["energy_mj"] == 20.0  # no inference in between: the last figures stand
    assert m.sample(3) == {"cpu_ms_per_inference": 5.0, "energy_mj": 20.0, "energy_method": "estimate"}
    cpu.t = 0.6  # the host restarted its counts at 3: a new baseline, then 100 ms over 50 inferences
    assert m.sample(53)["cpu_ms_per_inference"] == 2.0

    assert EnergyMeter(None, powercap=None, cpu_clock=cpu).sample(1) == {}
    bare = EnergyMeter(None, powercap=tmp_path / "none", cpu_clock=cpu)
    bare.sample(0)
    cpu.t = 0.7
    assert bare.sample(10) == {"cpu_ms_per_inference": 10.0}  # no power figure: CPU time only

    root = tmp_path / "root"
    rapl(root, "intel-rapl:0", "package-0", 1_000_000, max_range=10_000_000)
    rapl(root, "intel-rapl:0:0", "core", 500_000)  # a sub-zone is inside the package: not added again
    meter = EnergyMeter(4.0, powercap=root / "sys/class/powercap", cpu_clock=cpu)
    meter.sample(0)
    (root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj").write_text(
        "500000\n"
    )  # wrapped
    (root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0:0/energy_uj").write_text("900000\n")
    out = meter.sample(100)
    # 1_000_000 -> 500_000 µJ across the wrap at 10_000_000: 9.500001 J over 100 inferences
    assert out["energy_method"] == "rapl" and out["energy_mj"] == pytest.approx(95.00001, rel=1e-6)


def _energy_beat(world, agent, x, n):
    for _ in range(n):
        agent.host.predict(x)
    agent.run_once()
    return world.standin.last_heartbeat()["resources"]


def test_heartbeat_carries_estimated_energy_per_inference(world):
    agent = world.agent(cpu_watts=5.0)
    world.install(agent, "1.0.0")
    x = np.zeros((1, 64), dtype=np.float32)
    _energy_beat(world, agent, x, 1)  # a baseline with the model loaded
    hb = _energy_beat(world, agent, x, 200)
    assert hb["energy_method"] == "estimate" and hb["cpu_ms_per_inference"] > 0
    assert hb["energy_mj"] == pytest.approx(hb["cpu_ms_per_inference"] * 5.0, rel=1e-3)


def test_heartbeat_energy_from_rapl_counters(world, tmp_path):
    from tests.device.fakesys import rapl

    root = tmp_path / "sysroot"
    rapl(root, "intel-rapl:0", "package-0", 1_000_000)
    counter = root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj"
    agent = world.agent(device_state=f"sysfs:{root}", cpu_watts=5.0)
    world.install(agent, "1.0.0")
    x = np.zeros((1, 64), dtype=np.float32)
    _energy_beat(world, agent, x, 1)
    uj = int(counter.read_text())
    for _ in range(100):
        agent.host.predict(x)
    counter.write_text(f"{uj + 3_000_000}\n")  # 3 J while the 100 inferences ran
    agent.run_once()
    hb = world.standin.last_heartbeat()["resources"]
    assert hb["energy_method"] == "rapl" and hb["energy_mj"] == pytest.approx(30.0)


def test_dashboard_power_cell_shows_energy():
    from edgefleet.server._dashboard_model import _power

    assert _power(None) == "-"
    assert _power({"energy_mj": 0.4213, "energy_method": "estimate"}) == "0.421 mJ/inference (est.)"
    assert (
        _power({"power_rules": [], "power_switches": 2, "energy_mj": 12.0, "energy_method": "rapl"})
        == "normal (2 switches); 12 mJ/inference (RAPL)"
    )


def test_gated_requests_are_not_model_answers_in_the_agent(world, monkeypatch):
    """The runtime's trigger in the agent's host (EDGEFLEET_RUNTIME_TRIGGER, as a device sets it): gated
    answers stay out of health, telemetry and samples."""
    monkeypatch.setenv("EDGEFLEET_RUNTIME_TRIGGER", "energy:-30dBFS:0")
    agent = world.agent(cpu_watts=5.0)
    world.install(agent, "1.0.0")
    before = agent.host.health().requests
    quiet, loud = np.zeros((1, 64), np.float32), np.full((1, 64), 8.0, np.float32)  # raw pixels 0..16
    assert [agent.host.predict_result(quiet).triggered for _ in range(4)] == [False] * 4
    assert [agent.host.predict_result(loud).triggered for _ in range(3)] == [True] * 3
    assert agent.host.health().requests - before == 3  # the model's answers only
    st = agent.host.runtime.status()["trigger"]
    assert st["gated"] >= 4 and st["model_runs"] >= 3
