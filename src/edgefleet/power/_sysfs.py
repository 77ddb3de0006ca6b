"""Readers of the kernel's own accounts of a device: thermal zones, power supplies, RAPL, cgroup v2.

Each reader takes the directory it reads (``/sys/class/thermal``, ``/sys/class/power_supply``,
``/sys/class/powercap``, the process's cgroup v2 directory), so it is tested against a fixture folder laid
out like the kernel's. Every file is read with a size cap and every listing is capped: a hostile or broken
sysfs costs a few kilobytes, never memory. A missing directory means "this device has none" (an empty
answer), never an error; a file that cannot be parsed is skipped with its field left ``None``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ThermalZone",
    "PowerSupply",
    "EnergyCounter",
    "CgroupLimits",
    "read_thermal_zones",
    "read_power_supplies",
    "read_energy_counters",
    "read_cgroup",
    "own_cgroup_dir",
]

_MAX_FILE_BYTES = 4096  # sysfs attributes are one page at most
_MAX_ENTRIES = 256  # zones, supplies, RAPL domains or trip points read from one directory


def _read(path: Path) -> str | None:
    """The stripped text of a sysfs attribute (at most one page), or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace").strip()


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _entries(directory: Path, pattern: str) -> list[Path]:
    """Entries of ``directory`` whose names match ``pattern``, sorted naturally, capped at _MAX_ENTRIES."""
    try:
        with os.scandir(directory) as it:
            names = []
            for e in it:
                if re.fullmatch(pattern, e.name):
                    names.append(e.name)
                    if len(names) >= _MAX_ENTRIES:
                        break
    except OSError:
        return []

    def natural(name: str) -> list[object]:
        return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t]

    return [directory / n for n in sorted(names, key=natural)]


# --- thermal -----------------------------------------------------------------------------------------


@dataclass
class ThermalZone:
    """One ``thermal_zoneN``: its type, temperature and trip points (°C; the kernel writes m°C)."""

    name: str
    type: str
    temp_c: float | None
    trips: list[tuple[str, float]] = field(default_factory=list)  # (passive|active|hot|critical, °C)

    def first_trip_c(self, kinds: tuple[str, ...] = ("passive", "hot", "critical")) -> float | None:
        """The lowest trip point of these kinds: where the kernel starts throttling (passive) or worse."""
        temps = [t for k, t in self.trips if k in kinds]
        return min(temps) if temps else None


def read_thermal_zones(root: str | Path = "/sys/class/thermal") -> list[ThermalZone]:
    """Every ``thermal_zoneN`` under ``root`` with its trip points; [] when the device has none."""
    zones = []
    for d in _entries(Path(root), r"thermal_zone\d+"):
        milli = _int(d / "temp")
        trips = []
        for i in range(_MAX_ENTRIES):
            t = _int(d / f"trip_point_{i}_temp")
            if t is None:
                break
            kind = _read(d / f"trip_point_{i}_type") or "unknown"
            if t > 0:  # drivers write 0 or negative values for unused trip slots
                trips.append((kind, t / 1000.0))
        zones.append(
            ThermalZone(
                name=d.name,
                type=_read(d / "type") or "unknown",
                temp_c=None if milli is None else milli / 1000.0,
                trips=trips,
            )
        )
    return zones


# --- power supplies ---------------------------------------------------------------------------------


@dataclass
class PowerSupply:
    """One ``power_supply`` entry: a battery (capacity, status) or a source (Mains, USB: online)."""

    name: str
    type: str  # Battery, Mains, USB, UPS, Wireless
    online: bool | None = None
    capacity_percent: float | None = None
    status: str | None = None  # Charging, Discharging, Full, Not charging, Unknown

    @property
    def is_battery(self) -> bool:
        return self.type == "Battery"


def read_power_supplies(root: str | Path = "/sys/class/power_supply") -> list[PowerSupply]:
    """Every entry under ``/sys/class/power_supply``; [] on a device with none (a mains-only board)."""
    out = []
    for d in _entries(Path(root), r"[^.].*"):
        online = _int(d / "online")
        cap = _int(d / "capacity")
        out.append(
            PowerSupply(
                name=d.name,
                type=_read(d / "type") or "Unknown",
                online=None if online is None else online == 1,
                capacity_percent=None if cap is None else float(max(0, min(100, cap))),
                status=_read(d / "status"),
            )
        )
    return out


# --- RAPL energy counters ---------------------------------------------------------------------------


@dataclass
class EnergyCounter:
    """One powercap zone (``intel-rapl:0`` is ``package-0``): a cumulative µJ counter that wraps."""

    name: str
    zone: str
    energy_uj: int
    max_energy_range_uj: int | None

    def joules_since(self, earlier_uj: int) -> float:
        """Joules between an earlier reading and this one, across one wrap of the counter."""
        delta = self.energy_uj - earlier_uj
        if delta < 0 and self.max_energy_range_uj:
            delta += self.max_energy_range_uj + 1
        return max(0, delta) / 1e6


def read_energy_counters(root: str | Path = "/sys/class/powercap") -> list[EnergyCounter]:
    """RAPL zones with a readable ``energy_uj`` (``intel-rapl:N`` and sub-zones ``intel-rapl:N:M``).

    Since Linux 5.10 ``energy_uj`` is readable by root only; a zone this process may not read is left
    out, so an unprivileged agent falls back to the CPU-time estimate.
    """
    out = []
    for d in _entries(Path(root), r"[a-z0-9_-]+(:\d+)+"):
        uj = _int(d / "energy_uj")
        if uj is None:
            continue
        out.append(
            EnergyCounter(
                name=_read(d / "name") or d.name,
                zone=d.name,
                energy_uj=uj,
                max_energy_range_uj=_int(d / "max_energy_range_uj"),
            )
        )
    return out


# --- cgroup v2 --------------------------------------------------------------------------------------


@dataclass
class CgroupLimits:
    """What the process's cgroup v2 allows and how much it is stalled (PSI ``some avg10``, percent)."""

    path: str
    cpu_quota_cores: float | None = None  # cpu.max quota/period; None: no quota
    memory_max_bytes: int | None = None  # memory.max; None: no limit
    memory_current_bytes: int | None = None
    cpu_pressure: float | None = None
    memory_pressure: float | None = None
    io_pressure: float | None = None


def _psi_some_avg10(text: str | None) -> float | None:
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("some "):
            m = re.search(r"avg10=([0-9.]+)", line)
            return float(m.group(1)) if m else None
    return None


def own_cgroup_dir(
    mount: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
) -> Path | None:
    """This process's cgroup v2 directory (the ``0::/path`` line), or None without a v2 hierarchy."""
    text = _read(Path(proc_cgroup))
    mount = Path(mount)
    for line in (text or "").splitlines():
        if line.startswith("0::"):
            rel = line[3:].lstrip("/")
            for base in (mount, mount / "unified"):  # unified alone, or hybrid with v2 at .../unified
                d = base / rel
                if (d / "cgroup.controllers").exists():
                    return d
    return None


def read_cgroup(directory: str | Path | None) -> CgroupLimits | None:
    """Limits and PSI of one cgroup v2 directory; None when there is none."""
    if directory is None:
        return None
    d = Path(directory)
    if not d.is_dir():
        return None
    quota = None
    cpu_max = (_read(d / "cpu.max") or "").split()
    if len(cpu_max) == 2 and cpu_max[0] != "max":
        try:
            quota = int(cpu_max[0]) / int(cpu_max[1])
        except (ValueError, ZeroDivisionError):
            quota = None
    mem = _read(d / "memory.max")
    return CgroupLimits(
        path=str(d),
        cpu_quota_cores=quota,
        memory_max_bytes=int(mem) if mem and mem.isdigit() else None,
        memory_current_bytes=_int(d / "memory.current"),
        cpu_pressure=_psi_some_avg10(_read(d / "cpu.pressure")),
        memory_pressure=_psi_some_avg10(_read(d / "memory.pressure")),
        io_pressure=_psi_some_avg10(_read(d / "io.pressure")),
    )
