"""Wave membership: admission order (stratified by hardware, stable by hash), wave sizes, admission, and
what one engine pass reads once.

Owned by the rollout engine (``_rollouts.RolloutEngine``), which admits devices with these and holds the
``rollouts`` lock while it does.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from edgefleet.server._audit import audit
from edgefleet.server._fit import FitResult, VariantSpec, choose_variant, fit_key
from edgefleet.server._models import Device, Release, ReleaseVariant, Rollout, RolloutDevice
from edgefleet.server._schemas import RolloutGates
from edgefleet.server._selector import Selector, device_attrs

__all__ = [
    "ENGINE",
    "admission_order",
    "admit",
    "admit_late",
    "EnginePass",
    "ReleaseVariants",
    "device_hw",
    "install_failed",
    "member_hash",
    "rollout_rows",
    "selector_attrs",
    "wave_size",
    "write_assignments",
]

#: Who the audit log names for what the rollout engine does by itself.
ENGINE = "engine"
_ASSIGN_CHUNK = 2000  # device ids per UPDATE (SQLite allows 32,766 bound values)


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
    _fits: dict[tuple[Any, ...], FitResult] = field(default_factory=dict)
    #: devices admitted in this pass, by (variant id, rollout id): ``write_assignments`` writes them
    assign: dict[tuple[int, str], list[Device]] = field(default_factory=dict)
    #: why a device sits out a release (its update policy pins another version or defers; None: it may
    #: join); set by the engine, never for a forced rollout
    parked: Callable[[Device, str], Any] | None = None

    @property
    def devices(self) -> list[Device]:
        if self._devices is None:
            # Pending devices (enrolled, never sent a heartbeat) are never admitted to a wave.
            live = select(Device).where(Device.revoked.is_(False), Device.director_seq > 0)
            self._devices = list(self.s.scalars(live))
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

    def fit(self, release_id: int, d: Device) -> FitResult:
        """``choose_variant`` for the device, once per release and distinct hardware in this pass (a fleet
        has few distinct hardware descriptions; every pass asks about every candidate device)."""
        hw = device_hw(d)
        key = (release_id, fit_key(hw))
        got = self._fits.get(key)
        if got is None:
            got = self._fits[key] = choose_variant(self.release(release_id).variants, hw)
        return got

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


def _assigned_later(ctx: EnginePass, d: Device, r: Rollout) -> bool:
    """Was the device assigned by a rollout created after ``r`` (joining ``r`` late would go back)?"""
    if d.assigned_rollout_id is None or d.assigned_rollout_id == r.id:
        return False
    other = ctx.s.get(Rollout, d.assigned_rollout_id)
    return other is not None and other.created_at > r.created_at


def rollout_rows(s: Session, r: Rollout) -> dict[str, RolloutDevice]:
    """The rollout's member rows by device id."""
    return {
        rd.device_id: rd for rd in s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id))
    }


def admit(ctx: EnginePass, r: Rollout, *, opened: bool = False) -> None:
    """Admit devices into the current wave until it holds its share (``opened``: the wave just opened).

    Matching devices no variant fits are recorded as ``does_not_fit`` (with the reason) and never admitted;
    those whose update policy pins another version or defers are recorded as ``parked`` until it no longer does.
    """
    rel = ctx.release(r.release_id)
    rows = rollout_rows(ctx.s, r)
    sel = Selector.parse(r.selector)
    candidates: list[tuple[Device, FitResult, RolloutDevice | None]] = []
    for d in ctx.devices:
        rd = rows.get(d.id)
        if rd is not None and rd.status not in ("does_not_fit", "parked"):
            continue
        if not sel.matches(selector_attrs(d)) or _parked(ctx, r, d, rd, rows):
            continue
        rd = rows.get(d.id)
        fit = ctx.fit(r.release_id, d)
        if not fit.fits:
            if rd is None:
                rd = RolloutDevice(rollout_id=r.id, device_id=d.id, status="does_not_fit", reason=fit.reason)
                ctx.s.add(rd)
                rows[d.id] = rd
            elif rd.status != "does_not_fit" or rd.reason != fit.reason:
                rd.status, rd.reason = "does_not_fit", fit.reason
            continue
        candidates.append((d, fit, rd))
    admitted = sum(1 for rd in rows.values() if rd.status == "admitted")
    gates = RolloutGates(**r.gates)
    target = wave_size(admitted + len(candidates), r.waves[r.wave_index], gates.min_devices)
    need = target - admitted
    if need <= 0 and not opened:
        return
    by_id = ctx.by_id()
    covered = {
        (rd.variant_id, by_id[k].device_class)
        for k, rd in rows.items()
        if rd.status == "admitted" and k in by_id
    }
    chosen = admission_order(r.id, candidates, covered)[: max(need, 0)]
    for d, fit, rd in chosen:
        _admit_device(ctx, r, rel, d, fit, rd)
    audit(
        ctx.s,
        "rollout.wave_opened" if opened else "rollout.devices_admitted",
        actor=ENGINE,
        now=ctx.now,
        rollout_id=r.id,
        wave=r.wave_index + 1,
        percent=r.waves[r.wave_index],
        admitted=len(chosen),
        wave_size=target,
        eligible=admitted + len(candidates),
        devices=[d.id for d, _, _ in chosen][:200],
    )


def admission_order(
    rollout_id: str,
    candidates: list[tuple[Device, FitResult, RolloutDevice | None]],
    covered: set[tuple[int | None, str | None]],
) -> list[tuple[Device, FitResult, RolloutDevice | None]]:
    """Candidates in the order a wave admits them: stratified by hardware, then stable by hash.

    A release that is wrong on one hardware class only must meet its gates in the first wave, not in the
    wave after the others passed: the first candidate (by ``member_hash``) of each stratum (variant, device
    class) that no admitted member covers yet comes first, strata taken in the order of those first
    candidates' hashes; the others follow in hash order. A wave smaller than the number of strata covers
    as many as it holds; the next wave covers the next ones.
    """
    ordered = sorted(candidates, key=lambda c: member_hash(rollout_id, c[0].id))
    first: list[tuple[Device, FitResult, RolloutDevice | None]] = []
    seen = set(covered)
    for c in ordered:
        stratum = (c[1].variant.id if c[1].variant is not None else None, c[0].device_class)
        if stratum not in seen:
            seen.add(stratum)
            first.append(c)
    picked = {id(c) for c in first}
    return first + [c for c in ordered if id(c) not in picked]


def _admit_device(
    ctx: EnginePass,
    r: Rollout,
    rel: ReleaseVariants,
    d: Device,
    fit: FitResult,
    rd: RolloutDevice | None,
) -> None:
    assert fit.variant is not None
    if rd is None:
        rd = RolloutDevice(rollout_id=r.id, device_id=d.id)
        ctx.s.add(rd)
    rd.status = "admitted"
    rd.wave = r.wave_index
    rd.admitted_at = ctx.now
    rd.variant_id = fit.variant.id
    rd.reason = fit.reason
    rd.prev_version = d.active_version
    rd.prev_variant_id = ctx.variant_for_target(d.active_target)
    for key, value in _assigned(fit.variant.id, r.id):
        set_committed_value(d, key, value)  # what the pass reads; written by write_assignments
    ctx.assign.setdefault((fit.variant.id, r.id), []).append(d)
    ctx.nudges.append(d.id)


def _assigned(variant_id: int, rollout_id: str) -> tuple[tuple[str, Any], ...]:
    return (
        ("assigned_variant_id", variant_id),
        ("assigned_rollout_id", rollout_id),
        ("command", None),
        ("command_version", None),
    )


def write_assignments(ctx: EnginePass) -> None:
    """Write the pass's admissions to the devices' rows, last thing before the pass commits: one UPDATE
    per (variant, rollout) and chunk of ids.

    The ORM wrote one UPDATE per device (an executemany) as soon as a wave opened: 0.6 s for a 2,500-device
    wave, and the rows stayed locked through the gates' evaluation, stalling the devices' coalesced
    heartbeat writes (whole batches wait on one locked row). A device the same pass moved on since (a
    rollback) keeps what the ORM holds for it.
    """
    for (variant_id, rollout_id), devices in ctx.assign.items():
        ids = sorted(
            d.id
            for d in devices
            if (d.assigned_variant_id, d.assigned_rollout_id) == (variant_id, rollout_id)
        )
        for i in range(0, len(ids), _ASSIGN_CHUNK):
            ctx.s.execute(
                update(Device)
                .where(Device.id.in_(ids[i : i + _ASSIGN_CHUNK]))
                .values(dict(_assigned(variant_id, rollout_id)))
                .execution_options(synchronize_session=False)
            )
    ctx.assign.clear()


def _parked(
    ctx: EnginePass, r: Rollout, d: Device, rd: RolloutDevice | None, rows: dict[str, RolloutDevice]
) -> bool:
    """Does the device sit this rollout out (its update policy)? Recorded as a ``parked`` member row."""
    if ctx.parked is None or r.force:
        return False
    hold = ctx.parked(d, ctx.release(r.release_id).row.version)
    if hold is None:
        if rd is not None and rd.status == "parked":  # its pin or deferral ended: a candidate again
            ctx.s.delete(rd)
            del rows[d.id]
        return False
    if rd is None:
        rd = RolloutDevice(rollout_id=r.id, device_id=d.id, status="parked", reason=hold.message)
        ctx.s.add(rd)
        rows[d.id] = rd
    elif rd.status != "parked" or rd.reason != hold.message:
        rd.status, rd.reason = "parked", hold.message
    return True


def admit_late(ctx: EnginePass, r: Rollout) -> None:
    """A completed rollout admits the matching devices enrolled since it completed, and those that sat it
    out (``parked``) once their update policy lets them, unless a later rollout assigned them since."""
    rel = ctx.release(r.release_id)
    rows = rollout_rows(ctx.s, r)
    sel = Selector.parse(r.selector)
    for d in ctx.devices:
        rd = rows.get(d.id)
        if not sel.matches(selector_attrs(d)):
            continue
        if rd is None and d.assigned_variant_id is not None:
            continue
        if rd is not None and (rd.status != "parked" or _assigned_later(ctx, d, r)):
            continue
        if _parked(ctx, r, d, rd, rows):
            continue
        rd = rows.get(d.id)
        fit = ctx.fit(r.release_id, d)
        if not fit.fits:
            if rd is None:
                ctx.s.add(
                    RolloutDevice(rollout_id=r.id, device_id=d.id, status="does_not_fit", reason=fit.reason)
                )
            else:
                rd.status, rd.reason = "does_not_fit", fit.reason
            continue
        _admit_device(ctx, r, rel, d, fit, rd)
        audit(ctx.s, "rollout.device_admitted", actor=ENGINE, now=ctx.now, rollout_id=r.id, device_id=d.id)
