"""A fake sysfs tree laid out like the kernel's (this machine has no thermal zone, battery or RAPL).

Entries under /sys/class/* are symlinks into /sys/devices/..., as on a real device; values are written the
way the kernel writes them (millidegrees, microjoules, one value and a newline per attribute).
"""

from __future__ import annotations

import os
from pathlib import Path


def _attrs(d: Path, attrs: dict[str, object]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for k, v in attrs.items():
        (d / k).write_text(f"{v}\n")


def _link(cls_dir: Path, name: str, device_dir: Path) -> None:
    cls_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(device_dir, cls_dir), cls_dir / name)


def thermal_zone(root: Path, n: int, type_: str, temp_c: float, trips: list[tuple[str, float]]) -> None:
    dev = root / f"sys/devices/virtual/thermal/thermal_zone{n}"
    attrs: dict[str, object] = {"type": type_, "temp": int(temp_c * 1000), "mode": "enabled"}
    for i, (kind, t) in enumerate(trips):
        attrs[f"trip_point_{i}_type"] = kind
        attrs[f"trip_point_{i}_temp"] = int(t * 1000)
        attrs[f"trip_point_{i}_hyst"] = 0
    _attrs(dev, attrs)
    _link(root / "sys/class/thermal", f"thermal_zone{n}", dev)


def cooling_device(root: Path, n: int) -> None:
    dev = root / f"sys/devices/virtual/thermal/cooling_device{n}"
    _attrs(dev, {"type": "Processor", "cur_state": 0, "max_state": 3})
    _link(root / "sys/class/thermal", f"cooling_device{n}", dev)


def battery(root: Path, name: str, capacity: int, status: str) -> None:
    dev = root / f"sys/devices/LNXSYSTM:00/PNP0C0A:00/power_supply/{name}"
    _attrs(
        dev,
        {"type": "Battery", "capacity": capacity, "status": status, "present": 1, "technology": "Li-ion"},
    )
    _link(root / "sys/class/power_supply", name, dev)


def supply(root: Path, name: str, type_: str, online: bool) -> None:
    dev = root / f"sys/devices/platform/{name}/power_supply/{name}"
    _attrs(dev, {"type": type_, "online": int(online)})
    _link(root / "sys/class/power_supply", name, dev)


def rapl(root: Path, zone: str, name: str, energy_uj: int, max_range: int = 262143328850) -> None:
    dev = root / f"sys/devices/virtual/powercap/intel-rapl/{zone}"
    _attrs(dev, {"name": name, "energy_uj": energy_uj, "max_energy_range_uj": max_range, "enabled": 1})
    _link(root / "sys/class/powercap", zone, dev)


def cgroup(root: Path, rel: str, *, cpu_max: str, memory_max: str, cpu_some_avg10: float) -> None:
    d = root / "sys/fs/cgroup" / rel
    _attrs(
        d,
        {
            "cgroup.controllers": "cpuset cpu io memory pids",
            "cpu.max": cpu_max,
            "memory.max": memory_max,
            "memory.current": 52428800,
        },
    )
    (d / "cpu.pressure").write_text(
        f"some avg10={cpu_some_avg10:.2f} avg60=1.00 avg300=0.50 total=123456\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    (d / "memory.pressure").write_text(
        "some avg10=0.50 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    proc = root / "proc/self"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "cgroup").write_text(f"0::/{rel}\n")


def laptop(root: Path, *, temp_c: float = 52.0, capacity: int = 81, on_ac: bool = False) -> Path:
    """A laptop-like device: two thermal zones with trips, battery and AC adapter, RAPL, a cgroup."""
    thermal_zone(root, 0, "acpitz", 45.0, [("critical", 105.0)])
    thermal_zone(root, 1, "x86_pkg_temp", temp_c, [("passive", 85.0), ("critical", 100.0)])
    cooling_device(root, 0)
    battery(root, "BAT0", capacity, "Charging" if on_ac else "Discharging")
    supply(root, "AC", "Mains", on_ac)
    rapl(root, "intel-rapl:0", "package-0", 123_456_789)
    rapl(root, "intel-rapl:0:0", "core", 23_456_789)
    (root / "sys/devices/virtual/powercap/intel-rapl").mkdir(parents=True, exist_ok=True)
    os.symlink("../../devices/virtual/powercap/intel-rapl", root / "sys/class/powercap/intel-rapl")
    cgroup(
        root,
        "system.slice/edgefleet-agent.service",
        cpu_max="150000 100000",
        memory_max="536870912",
        cpu_some_avg10=12.5,
    )
    return root
