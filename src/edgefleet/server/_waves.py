"""Wave membership: stable admission order, wave sizes, and what one pass of the rollout engine reads once.

Owned by the rollout engine (``_rollouts.RolloutEngine``), which admits devices with these and holds the
``rollouts`` lock while it does.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.server._fit import VariantSpec
from edgefleet.server._models import Device, Release, ReleaseVariant, Rollout, RolloutDevice
from edgefleet.server._selector import device_attrs

__all__ = [
    "EnginePass",
    "ReleaseVariants",
    "device_hw",
    "install_failed",
    "member_hash",
    "rollout_rows",
    "selector_attrs",
    "wave_size",
]


def member_hash(rollout_id: str, device_id: str) -> int:
    """Stable position of a device in a rollout's order of admission."""
    return int.from_bytes(hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()[:8], "big")


def wave_size(eligible: int, percent: float, min_devices: int) -> int:
    """Devices a wave holds: its share of the eligible devices, and never fewer than the gate needs."""
    if eligible <= 0:
        return 0
    share = math.ceil(eligible * percent / 100.0 - 1e-9)
    return min(eligible, max(share, min(min_devices, eligible)))


@dataclass
class ReleaseVariants:
    """A release with its variants, read once per engine pass."""

    row: Release
    variants: list[VariantSpec]
    by_id: dict[int, ReleaseVariant]


@dataclass
class EnginePass:
    """What one engine pass reads once and shares between rollouts."""

    s: Session
    now: float
    nudges: list[str] = field(default_factory=list)
    _devices: list[Device] | None = None
    _releases: dict[int, ReleaseVariants] = field(default_factory=dict)
    _by_target: dict[str, int] | None = None

    @property
    def devices(self) -> list[Device]:
        if self._devices is None:
            self._devices = list(self.s.scalars(select(Device).where(Device.revoked.is_(False))))
        return self._devices

    def by_id(self) -> dict[str, Device]:
        return {d.id: d for d in self.devices}

    def release(self, release_id: int) -> ReleaseVariants:
        if release_id not in self._releases:
            row = self.s.get(Release, release_id)
            rows = list(
                self.s.scalars(
                    select(ReleaseVariant)
                    .where(ReleaseVariant.release_id == release_id)
                    .order_by(ReleaseVariant.id)
                )
            )
            specs = [VariantSpec(v.id, v.variant, tuple(v.device_classes), v.runtime) for v in rows]
            self._releases[release_id] = ReleaseVariants(row, specs, {v.id: v for v in rows})
        return self._releases[release_id]

    def variant_for_target(self, target_path: str | None) -> int | None:
        if not target_path:
            return None
        if self._by_target is None:
            self._by_target = {
                t: i for i, t in self.s.execute(select(ReleaseVariant.id, ReleaseVariant.target_path))
            }
        return self._by_target.get(target_path)


def device_hw(d: Device) -> dict[str, Any]:
    """The hardware facts a variant is chosen by (``choose_variant``)."""
    hw = dict(d.hardware or {})
    hw["device_class"] = d.device_class
    return hw


def selector_attrs(d: Device) -> dict[str, str | None]:
    """The attributes a rollout selector matches."""
    return device_attrs(
        device_id=d.id,
        name=d.name,
        device_class=d.device_class,
        arch=d.arch,
        tags=d.tags,
        active_version=d.active_version,
        active_name=d.active_name,
    )


def install_failed(d: Device, rd: RolloutDevice, version: str, sha256: str | None) -> bool:
    """Did the device fail to install (or roll itself back from) ``version`` since it was admitted?

    ``fail_version`` holds what the device's report named: a version, ``sha:<prefix>`` of the
    build (the agent's "refused" event), or ``*`` (a failure state that named nothing).
    """
    fv = d.fail_version
    if d.active_version == version or fv is None:
        return False
    if (d.fail_at or 0.0) < (rd.admitted_at or 0.0):
        return False
    if fv.startswith("sha:"):
        return bool(sha256) and sha256.startswith(fv[4:])
    return fv in (version, "*")


def rollout_rows(s: Session, r: Rollout) -> dict[str, RolloutDevice]:
    """The rollout's member rows by device id."""
    return {
        rd.device_id: rd for rd in s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id))
    }
