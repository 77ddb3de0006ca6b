"""The device's state behind one seam: what the policies read, from sysfs or from a scripted trace.

:class:`SysfsSource` reads the real kernel interfaces (``_sysfs``) and psutil's battery; a
:class:`ScriptedSource` replays a battery/temperature trace (YAML or CSV) for tests and the demo, where no
battery or thermal zone exists. Both answer :meth:`read` with a :class:`DeviceState`.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydValidationError

from edgefleet.errors import ConfigError
from edgefleet.power._sysfs import (
    own_cgroup_dir,
    read_cgroup,
    read_energy_counters,
    read_power_supplies,
    read_thermal_zones,
)

__all__ = [
    "DeviceState",
    "StateSource",
    "SysfsSource",
    "ScriptedSource",
    "TraceRow",
    "open_state_source",
]

PowerSource = Literal["ac", "usb", "battery"]
Link = Literal["metered", "unmetered"]

_MAX_TRACE_BYTES = 4 << 20
_MAX_TRACE_ROWS = 100_000


@dataclass
class DeviceState:
    """One reading of the device: what a policy rule can test. ``None``: this device cannot tell."""

    battery_percent: float | None = None
    power_source: PowerSource | None = None
    temp_c: float | None = None  # hottest thermal zone
    trip_c: float | None = None  # its first passive/hot/critical trip point
    link: Link | None = None
    hour: float | None = None  # local time of day, 0 <= hour < 24
    cpu_pressure: float | None = None  # PSI some avg10, percent
    energy_uj: int | None = None  # sum of the RAPL package counters
    source: str = "sysfs"
    trace_t: float | None = None  # a scripted source only: seconds into its trace

    @property
    def headroom_c(self) -> float | None:
        """Degrees left before the thermal trip point (negative: past it)."""
        if self.temp_c is None or self.trip_c is None:
            return None
        return self.trip_c - self.temp_c

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "headroom_c": self.headroom_c}


class StateSource(Protocol):
    """Anything that can say what state the device is in now."""

    def read(self) -> DeviceState: ...


def _local_hour(now: float | None = None) -> float:
    t = datetime.fromtimestamp(time.time() if now is None else now)
    return t.hour + t.minute / 60 + t.second / 3600


def _metered_from_env() -> Link | None:
    v = os.environ.get("EDGEFLEET_METERED", "").strip().lower()
    if v in ("1", "yes", "true", "metered"):
        return "metered"
    if v in ("0", "no", "false", "unmetered"):
        return "unmetered"
    return None


class SysfsSource:
    """The real device: thermal zones, power supplies, RAPL and cgroup PSI from the kernel.

    Args:
        root: filesystem root the kernel paths are read under ("/" on a device; a fixture tree in tests).
        metered: the link is metered (True) or not (False); None: ``EDGEFLEET_METERED`` (1/0), else unknown.
            NetworkManager's GENERAL.METERED is what to put here where NetworkManager runs.
        use_psutil: fall back to ``psutil.sensors_battery()`` when sysfs shows no battery.
    """

    def __init__(self, root: str | Path = "/", *, metered: bool | None = None, use_psutil: bool = True):
        self.root = Path(root)
        self.metered = metered
        self.use_psutil = use_psutil
        self._cgroup = own_cgroup_dir(self.root / "sys/fs/cgroup", self.root / "proc/self/cgroup")

    def read(self) -> DeviceState:
        s = DeviceState(hour=_local_hour(), source="sysfs")
        zones = [z for z in read_thermal_zones(self.root / "sys/class/thermal") if z.temp_c is not None]
        with_trip = [z for z in zones if z.first_trip_c() is not None]
        if with_trip:  # the zone closest to its own trip point is the one that matters
            z = min(with_trip, key=lambda z: (z.first_trip_c() or 0.0) - (z.temp_c or 0.0))
            s.temp_c, s.trip_c = z.temp_c, z.first_trip_c()
        elif zones:
            s.temp_c = max(z.temp_c or 0.0 for z in zones)
        self._power(s)
        if self.metered is not None:
            s.link = "metered" if self.metered else "unmetered"
        else:
            s.link = _metered_from_env()
        cg = read_cgroup(self._cgroup)
        if cg is not None:
            s.cpu_pressure = cg.cpu_pressure
        packages = [
            c for c in read_energy_counters(self.root / "sys/class/powercap") if c.zone.count(":") == 1
        ]
        if packages:
            s.energy_uj = sum(c.energy_uj for c in packages)
        return s

    def _power(self, s: DeviceState) -> None:
        supplies = read_power_supplies(self.root / "sys/class/power_supply")
        batteries = [p for p in supplies if p.is_battery and p.capacity_percent is not None]
        if batteries:
            s.battery_percent = min(p.capacity_percent or 0.0 for p in batteries)
        external = [p for p in supplies if not p.is_battery and p.online]
        if external:
            s.power_source = "ac" if any(p.type in ("Mains", "UPS") for p in external) else "usb"
        elif batteries:
            charging = any(p.status in ("Charging", "Full") for p in batteries)
            s.power_source = "ac" if charging else "battery"
        elif self.use_psutil and self.root == Path("/"):
            self._psutil_battery(s)

    @staticmethod
    def _psutil_battery(s: DeviceState) -> None:
        try:
            import psutil

            b = psutil.sensors_battery()
        except Exception:  # noqa: BLE001 - no battery API on this platform
            return
        if b is not None:
            s.battery_percent = float(b.percent)
            s.power_source = "ac" if b.power_plugged else "battery"


class TraceRow(BaseModel):
    """One step of a scripted trace: from ``t`` seconds after the start, the device is in this state."""

    model_config = ConfigDict(extra="forbid")

    t: float = Field(ge=0)
    battery_percent: float | None = Field(None, ge=0, le=100)
    power_source: PowerSource | None = None
    temp_c: float | None = Field(None, ge=-60, le=250)
    trip_c: float | None = Field(None, ge=-60, le=250)
    link: Link | None = None
    hour: float | None = Field(None, ge=0, lt=24)
    cpu_pressure: float | None = Field(None, ge=0, le=100)


class ScriptedSource:
    """A scripted device (stand-in for a battery and thermal zone this machine lacks): replays a trace.

    The state at a moment is the last row whose ``t`` has passed, ``speed`` trace seconds per real second
    after the first :meth:`read`. Rows are sorted by ``t``; fields a row leaves out keep their last value.

    Args:
        rows: the trace.
        clock: seconds, monotonic (tests pass a fake one).
        speed: trace seconds per clock second (a 2-hour drain replayed in a minute: 120).
    """

    def __init__(
        self, rows: list[TraceRow], *, clock: Callable[[], float] = time.monotonic, speed: float = 1.0
    ) -> None:
        if not rows:
            raise ConfigError("a scripted device trace needs at least one row", hint="add rows with t: 0 ...")
        if speed <= 0:
            raise ConfigError(
                f"trace speed must be > 0, not {speed}", hint="e.g. speed 60 plays a minute a second"
            )
        self.rows = sorted(rows, key=lambda r: r.t)
        self.clock = clock
        self.speed = speed
        self._t0: float | None = None

    @property
    def duration_s(self) -> float:
        return self.rows[-1].t

    def read(self) -> DeviceState:
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        t = (now - self._t0) * self.speed
        return self.at(t)

    def at(self, t: float) -> DeviceState:
        """The state ``t`` trace seconds after the start (fields carried forward from earlier rows)."""
        values: dict[str, Any] = {}
        for r in self.rows:
            if r.t > t:
                break
            values.update({k: v for k, v in r.model_dump(exclude={"t"}).items() if v is not None})
        if "hour" not in values:
            values["hour"] = _local_hour()
        return DeviceState(**values, source="scripted", trace_t=round(t, 3))

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> ScriptedSource:
        """Read a trace: YAML (a list of rows, or ``{rows: [...]}``) or CSV with a header row."""
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > _MAX_TRACE_BYTES:
                raise ConfigError(
                    f"device trace {p} is {size} bytes; the limit is {_MAX_TRACE_BYTES}",
                    hint="thin the trace: one row per state change is enough",
                )
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"device trace {p} cannot be read: {e.strerror}", hint="check the path") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"device trace {p} is not UTF-8 text", hint="write it as YAML or CSV") from e
        raw = _parse_csv(p, text) if p.suffix.lower() == ".csv" else _parse_yaml(p, text)
        if len(raw) > _MAX_TRACE_ROWS:
            raise ConfigError(f"device trace {p} has {len(raw)} rows; the limit is {_MAX_TRACE_ROWS}")
        rows = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise ConfigError(
                    f"device trace {p}: row {i + 1} is not a mapping", hint="t: 0, temp_c: 40, ..."
                )
            try:
                rows.append(TraceRow.model_validate(item))
            except PydValidationError as e:
                problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
                raise ConfigError(
                    f"device trace {p}: row {i + 1} is invalid: {problems}",
                    hint="fields: " + ", ".join(TraceRow.model_fields),
                ) from e
        return cls(rows, **kw)


def _parse_yaml(p: Path, text: str) -> list[Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"device trace {p} is not valid YAML: {e}", hint="fix the YAML syntax") from e
    if isinstance(data, dict) and "rows" in data:
        data = data["rows"]
    if not isinstance(data, list):
        raise ConfigError(f"device trace {p} must be a list of rows", hint="- {t: 0, battery_percent: 100}")
    return data


def _parse_csv(p: Path, text: str) -> list[Any]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for line in reader:
        if None in line:
            raise ConfigError(f"device trace {p}: line {reader.line_num} has more cells than the header")
        rows.append({k.strip(): v.strip() for k, v in line.items() if v is not None and v.strip() != ""})
    return rows


def open_state_source(spec: str, *, speed: float = 1.0, metered: bool | None = None) -> StateSource:
    """``sysfs`` (this device, the default), ``sysfs:ROOT`` (a tree laid out like /) or ``scripted:TRACE``;
    ``metered``: the link is known to be metered (True) or not (False), for sysfs sources."""
    kind, _, arg = spec.partition(":")
    if kind == "sysfs":
        return SysfsSource(arg or "/", metered=metered)
    if kind == "scripted" and arg:
        return ScriptedSource.from_file(arg, speed=speed)
    raise ConfigError(
        f"unknown device state source {spec!r}",
        hint="use sysfs, sysfs:/path/to/root or scripted:/path/to/trace.yaml",
    )
