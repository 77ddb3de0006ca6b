"""The health of a group of devices, summed for the rollout gates (``_gates``) from the ``devices`` rows.

Two periods: :meth:`Aggregate.of` sums each device's running counters for the build it reports
(``DeviceHealth.totals``: cumulative since the device started that build); :meth:`Aggregate.recent` sums
only the last heartbeat's window of each device heard from since a given time, so that two groups summed
with the same ``since`` are measured over the same minutes (a busy machine slows both alike).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from edgefleet.server._device_health import DeviceHealth
from edgefleet.server._models import Device

__all__ = ["Aggregate"]


@dataclass
class Aggregate:
    """Health of a group of devices, summed from their per-version counters."""

    devices: int = 0
    requests: int = 0
    errors: int = 0
    lat_sum: float = 0.0
    lat_w: float = 0.0
    conf_sum: float = 0.0
    conf_w: float = 0.0
    golden_pass: int = 0
    golden_n: int = 0
    shadow_sum: float = 0.0
    shadow_n: int = 0
    drift_sum: float = 0.0
    drift_n: int = 0

    @classmethod
    def of(cls, devices: Iterable[Device]) -> Aggregate:
        """Counters since each device started its build."""
        a = cls()
        for t in map(DeviceHealth.totals, devices):
            a.devices += 1
            a.requests += t.requests
            a.errors += t.errors
            a.lat_sum += t.lat_sum
            a.lat_w += t.lat_w
            a.conf_sum += t.conf_sum
            a.conf_w += t.conf_w
            if t.golden is not None:
                a.golden_n += 1
                a.golden_pass += int(bool(t.golden))
            if t.shadow is not None:
                a.shadow_n += 1
                a.shadow_sum += t.shadow
            if t.drift is not None:
                a.drift_n += 1
                a.drift_sum += t.drift
        return a

    @classmethod
    def recent(cls, devices: Iterable[Device], since: float) -> Aggregate:
        """The last heartbeat's window of each device heard from at or after ``since`` (weights as in
        ``DeviceHealth.beat_params``: a window's p95 and mean confidence count once per request)."""
        a = cls()
        for d in devices:
            h = d.health or {}
            if d.last_seen is None or d.last_seen < since or not h:
                continue
            req = max(0, int(h.get("requests") or 0))
            w = float(max(req, 1))
            a.devices += 1
            a.requests += req
            a.errors += max(0, min(int(h.get("errors") or 0), req))
            if h.get("latency_p95_ms") is not None:
                a.lat_sum += float(h["latency_p95_ms"]) * w
                a.lat_w += w
            if h.get("mean_confidence") is not None:
                a.conf_sum += float(h["mean_confidence"]) * w
                a.conf_w += w
        return a

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Aggregate | None:
        if not d:
            return None
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.get("raw", d).items() if k in names})

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def latency_p95_ms(self) -> float | None:
        return self.lat_sum / self.lat_w if self.lat_w else None

    @property
    def mean_confidence(self) -> float | None:
        return self.conf_sum / self.conf_w if self.conf_w else None

    @property
    def golden_pass_rate(self) -> float | None:
        return self.golden_pass / self.golden_n if self.golden_n else None

    @property
    def shadow_agreement(self) -> float | None:
        return self.shadow_sum / self.shadow_n if self.shadow_n else None

    @property
    def drift_score(self) -> float | None:
        return self.drift_sum / self.drift_n if self.drift_n else None

    def brief(self) -> dict[str, Any]:
        """What the ratio gates read, for the evaluation shown to operators."""
        return {
            "devices": self.devices,
            "requests": self.requests,
            "latency_p95_ms": _r(self.latency_p95_ms),
            "mean_confidence": _r(self.mean_confidence),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": _r(self.error_rate),
            "latency_p95_ms": _r(self.latency_p95_ms),
            "mean_confidence": _r(self.mean_confidence),
            "golden_pass_rate": _r(self.golden_pass_rate),
            "shadow_agreement": _r(self.shadow_agreement),
            "drift_score": _r(self.drift_score),
            "raw": asdict(self),
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
