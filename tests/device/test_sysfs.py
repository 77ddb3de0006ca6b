"""The kernel readers against a fake sysfs tree laid out like the real one (symlinks, m°C, µJ)."""

from __future__ import annotations

import os

import fakesys
import pytest

from edgefleet.power._state import SysfsSource, open_state_source
from edgefleet.power._sysfs import (
    own_cgroup_dir,
    read_cgroup,
    read_energy_counters,
    read_power_supplies,
    read_thermal_zones,
)


def test_thermal_zones_and_trip_points(tmp_path):
    fakesys.laptop(tmp_path, temp_c=61.5)
    zones = read_thermal_zones(tmp_path / "sys/class/thermal")
    assert [z.name for z in zones] == ["thermal_zone0", "thermal_zone1"]  # cooling_device0 is not a zone
    pkg = zones[1]
    assert pkg.type == "x86_pkg_temp" and pkg.temp_c == 61.5
    assert pkg.trips == [("passive", 85.0), ("critical", 100.0)]
    assert pkg.first_trip_c() == 85.0
    assert zones[0].first_trip_c() == 105.0


def test_zones_sort_naturally_and_skip_unused_trips(tmp_path):
    for n in (10, 2, 1):
        fakesys.thermal_zone(tmp_path, n, "soc", 40.0 + n, [("passive", 0), ("hot", 90.0)])
    zones = read_thermal_zones(tmp_path / "sys/class/thermal")
    assert [z.name for z in zones] == ["thermal_zone1", "thermal_zone2", "thermal_zone10"]
    assert zones[0].trips == [("hot", 90.0)]  # a 0 m°C slot is an unused trip, not a trip at 0 °C


def test_power_supplies(tmp_path):
    fakesys.laptop(tmp_path, capacity=37, on_ac=False)
    fakesys.supply(tmp_path, "usb-c", "USB", False)
    by = {p.name: p for p in read_power_supplies(tmp_path / "sys/class/power_supply")}
    assert by["BAT0"].is_battery and by["BAT0"].capacity_percent == 37 and by["BAT0"].status == "Discharging"
    assert by["AC"].type == "Mains" and by["AC"].online is False
    assert by["usb-c"].online is False


def test_rapl_counters_and_wrap(tmp_path):
    fakesys.laptop(tmp_path)
    counters = read_energy_counters(tmp_path / "sys/class/powercap")
    assert [(c.zone, c.name) for c in counters] == [("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "core")]
    pkg = counters[0]
    assert pkg.joules_since(123_456_789 - 2_000_000) == pytest.approx(2.0)
    # the counter wrapped: 1 J before the top, 0.5 J after zero
    pkg.energy_uj = 500_000
    assert pkg.joules_since(pkg.max_energy_range_uj - 1_000_000 + 1) == pytest.approx(1.5)


def test_rapl_unreadable_counter_is_left_out(tmp_path):
    fakesys.rapl(tmp_path, "intel-rapl:0", "package-0", 1000)
    (tmp_path / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj").unlink()
    assert read_energy_counters(tmp_path / "sys/class/powercap") == []


def test_cgroup_limits_and_pressure(tmp_path):
    fakesys.laptop(tmp_path)
    d = own_cgroup_dir(tmp_path / "sys/fs/cgroup", tmp_path / "proc/self/cgroup")
    assert d == tmp_path / "sys/fs/cgroup/system.slice/edgefleet-agent.service"
    cg = read_cgroup(d)
    assert cg.cpu_quota_cores == 1.5 and cg.memory_max_bytes == 512 << 20
    assert cg.cpu_pressure == 12.5 and cg.memory_pressure == 0.5 and cg.io_pressure is None


def test_cgroup_without_limits(tmp_path):
    fakesys.cgroup(tmp_path, "user.slice", cpu_max="max 100000", memory_max="max", cpu_some_avg10=0)
    cg = read_cgroup(own_cgroup_dir(tmp_path / "sys/fs/cgroup", tmp_path / "proc/self/cgroup"))
    assert cg.cpu_quota_cores is None and cg.memory_max_bytes is None


def test_missing_tree_means_none(tmp_path):
    assert read_thermal_zones(tmp_path / "nope") == []
    assert read_power_supplies(tmp_path / "nope") == []
    assert read_energy_counters(tmp_path / "nope") == []
    assert own_cgroup_dir(tmp_path / "nope", tmp_path / "nope") is None
    s = SysfsSource(tmp_path, use_psutil=False).read()
    assert (s.temp_c, s.battery_percent, s.power_source, s.energy_uj) == (None, None, None, None)


def test_garbage_and_oversized_attributes_are_skipped(tmp_path):
    fakesys.thermal_zone(tmp_path, 0, "cpu", 50.0, [("passive", 80.0)])
    zone = tmp_path / "sys/devices/virtual/thermal/thermal_zone0"
    (zone / "temp").write_text("not a number\n")
    (zone / "type").write_bytes(b"\xff\xfe" + b"x" * (1 << 20))  # 1 MiB of junk: read one page only
    z = read_thermal_zones(tmp_path / "sys/class/thermal")[0]
    assert z.temp_c is None and len(z.type) <= 4096 and z.trips == [("passive", 80.0)]


def test_source_reads_the_zone_closest_to_its_trip(tmp_path):
    fakesys.laptop(tmp_path, temp_c=80.0, capacity=42, on_ac=False)
    s = SysfsSource(tmp_path, metered=True).read()
    # acpitz is 45 of 105 (60 left); the package is 80 of 85 (5 left): the package decides
    assert (s.temp_c, s.trip_c, s.headroom_c) == (80.0, 85.0, 5.0)
    assert s.battery_percent == 42 and s.power_source == "battery"
    assert s.link == "metered" and s.cpu_pressure == 12.5 and s.energy_uj == 123_456_789
    assert s.source == "sysfs" and 0 <= s.hour < 24


def test_source_on_mains_and_metered_from_env(tmp_path, monkeypatch):
    fakesys.laptop(tmp_path, on_ac=True)
    monkeypatch.setenv("EDGEFLEET_METERED", "0")
    s = SysfsSource(tmp_path).read()
    assert s.power_source == "ac" and s.link == "unmetered"
    monkeypatch.delenv("EDGEFLEET_METERED")
    assert SysfsSource(tmp_path).read().link is None
    assert open_state_source(f"sysfs:{tmp_path}", metered=True).read().link == "metered"


def test_real_machine_reads_without_error():
    s = SysfsSource("/").read()  # whatever this machine has (here: no zones, no battery)
    assert s.source == "sysfs"
    if not os.path.isdir("/sys/class/thermal") or not os.listdir("/sys/class/thermal"):
        assert s.temp_c is None
