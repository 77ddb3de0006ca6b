"""Energy per inference on a running device, worked out at heartbeat time from counters that already exist.

Nothing is added to the request path: at each heartbeat the meter reads the process's CPU time
(``time.process_time``), the host's cumulative request count, and the RAPL package counters when this
process may read them, and divides the change since the previous heartbeat by the inferences answered in
between.

- ``rapl``: package joules over the interval / inferences. RAPL measures the whole package, so this is an
  upper bound: it includes everything else the device ran meanwhile (and idle power).
- ``estimate``: process CPU ms per inference x the device's CPU power figure (``AgentConfig.cpu_watts``,
  the profile's ``device.cpu_watts``). The agent's own work is in the CPU time too: an estimate.

Without RAPL and without a power figure only the CPU time per inference is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["EnergyMeter"]


class EnergyMeter:
    """``sample(requests)`` at each heartbeat -> the energy fields of ``Resources`` (empty at the first)."""

    def __init__(
        self,
        watts: float | None = None,
        *,
        powercap: str | Path | None = "/sys/class/powercap",
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.watts = watts
        self.powercap = Path(powercap) if powercap is not None else None
        self.cpu_clock = cpu_clock
        self._prev: tuple[int, float, dict[str, Any] | None] | None = None
        self.last: dict[str, Any] = {}

    def _package(self) -> dict[str, Any] | None:
        if self.powercap is None:
            return None
        from edgefleet.power._profile import _package_uj

        try:
            return _package_uj(self.powercap)
        except OSError:
            return None

    def sample(self, requests: int) -> dict[str, Any]:
        """Energy fields for the interval since the previous call (``requests``: the cumulative count of
        inferences). An interval without inferences repeats the last figures (nothing new was learnt); a
        counter that went backwards (a restarted host) starts a new baseline."""
        now = (int(requests), self.cpu_clock(), self._package())
        prev, self._prev = self._prev, now
        if prev is None or now[0] < prev[0]:
            return dict(self.last)
        n = now[0] - prev[0]
        if n == 0:
            return dict(self.last)
        cpu_ms = max(0.0, now[1] - prev[1]) * 1000 / n
        out: dict[str, Any] = {"cpu_ms_per_inference": round(cpu_ms, 4)}
        before, after = prev[2], now[2]
        joules = None
        if before is not None and after is not None:
            joules = sum(c.joules_since(before[c.zone].energy_uj) for c in after.values() if c.zone in before)
        if joules:
            out["energy_mj"] = round(joules * 1000 / n, 4)
            out["energy_method"] = "rapl"
        elif self.watts:
            out["energy_mj"] = round(cpu_ms * self.watts, 4)
            out["energy_method"] = "estimate"
        self.last = out
        return dict(out)
