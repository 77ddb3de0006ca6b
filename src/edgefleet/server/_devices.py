"""The device registry for operators: list, read, rename/retag, revoke and nudge devices.

``device_status`` is the one definition of pending / online / stale / offline / revoked (pending: enrolled
but never sent a heartbeat; the others from ``last_seen`` and the server's ``stale_after_s`` /
``offline_after_s``); ``status_filter`` is the same rule in SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from edgefleet.errors import NotFoundError
from edgefleet.server._audit import audit
from edgefleet.server._config import ServerConfig
from edgefleet.server._db import Database
from edgefleet.server._device_health import DeviceHealth
from edgefleet.server._models import Device
from edgefleet.server._notify import Notifier
from edgefleet.server._schemas import DevicePatch
from edgefleet.server._selector import Selector, device_attrs

__all__ = ["DeviceRegistry", "device_dict", "device_status", "status_filter"]


def device_status(d: Device, now: float, stale_after_s: float, offline_after_s: float) -> str:
    """How recently a device was heard from: pending (never), online, stale, offline, or revoked."""
    if d.revoked:
        return "revoked"
    if not d.director_seq:
        return "pending"
    age = now - d.last_seen
    return "offline" if age >= offline_after_s else "stale" if age >= stale_after_s else "online"


def status_filter(
    status: str, now: float, stale_after_s: float, offline_after_s: float
) -> ColumnElement[bool]:
    """The devices ``device_status`` calls ``status``, as a WHERE clause."""
    if status == "revoked":
        return Device.revoked.is_(True)
    if status == "pending":
        return and_(Device.revoked.is_(False), Device.director_seq == 0)
    live = and_(Device.revoked.is_(False), Device.director_seq > 0)
    if status == "online":
        return and_(live, Device.last_seen > now - stale_after_s)
    if status == "stale":
        return and_(live, Device.last_seen <= now - stale_after_s, Device.last_seen > now - offline_after_s)
    return and_(live, Device.last_seen <= now - offline_after_s)


def device_dict(
    d: Device, now: float, cfg: ServerConfig, assigned: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A device as the operator API shows it."""
    return {
        "id": d.id,
        "name": d.name,
        "class": d.device_class,
        "arch": d.arch,
        "tags": d.tags,
        "status": device_status(d, now, cfg.stale_after_s, cfg.offline_after_s),
        "last_seen": d.last_seen,
        "last_seen_s_ago": round(now - d.last_seen, 1),
        "enrolled_at": d.enrolled_at,
        "active": None
        if d.active_version is None
        else {
            "name": d.active_name,
            "version": d.active_version,
            "variant": d.active_variant,
            "target_path": d.active_target,
            "sha256": d.active_sha256,
        },
        "state": d.state,
        "progress": d.progress,
        "last_error": d.last_error,
        "health": d.health,
        "health_totals": DeviceHealth.to_dict(d),
        "resources": d.resources,
        "hardware": d.hardware,
        "assigned": assigned,
        "command": d.command,
        "last_failure": None
        if d.fail_version is None
        else {"build": d.fail_version, "at": d.fail_at, "reason": d.fail_reason},
    }


class DeviceRegistry:
    """Operator reads and changes of device records (the devices' own calls are ``DeviceService``'s)."""

    def __init__(
        self,
        db: Database,
        config: ServerConfig,
        notifier: Notifier,
        *,
        clock: Callable[[], float],
        assignment: Callable[[int, str | None], dict[str, Any] | None],
    ) -> None:
        self.db = db
        self.config = config
        self.notifier = notifier
        self.clock = clock
        self._assignment = assignment

    def get(self, device_id: str) -> dict[str, Any]:
        """One device with its current assignment."""
        now = self.clock()
        with self.db.read() as s:
            d = _device(s, device_id)
            assigned = None
            if d.assigned_variant_id is not None:
                assigned = self._assignment(d.assigned_variant_id, d.assigned_rollout_id)
            return device_dict(d, now, self.config, assigned)

    def list(
        self, *, selector: str | None = None, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> dict[str, Any]:
        """A page of the devices matching ``selector`` and ``status``, in enrollment order, and their total."""
        cfg = self.config
        sel = Selector.parse(selector)
        limit = min(limit, cfg.page_limit)
        now = self.clock()
        with self.db.read() as s:
            q = select(Device).order_by(Device.enrolled_at, Device.id)
            if status is not None:
                q = q.where(status_filter(status, now, cfg.stale_after_s, cfg.offline_after_s))
            matched = [
                d
                for d in s.scalars(q)
                if sel.matches(
                    device_attrs(
                        device_id=d.id,
                        name=d.name,
                        device_class=d.device_class,
                        arch=d.arch,
                        tags=d.tags,
                        active_version=d.active_version,
                        active_name=d.active_name,
                    )
                )
            ]
            page = matched[offset : offset + limit]
            return {"total": len(matched), "devices": [device_dict(d, now, cfg) for d in page]}

    def patch(self, device_id: str, body: DevicePatch, *, actor: str) -> dict[str, Any]:
        now = self.clock()
        with self.db.write() as s:
            d = _device(s, device_id)
            changed = {}
            if body.tags is not None:
                changed["tags"] = {"from": d.tags, "to": body.tags}
                d.tags = body.tags
            if body.name is not None:
                changed["name"] = {"from": d.name, "to": body.name}
                d.name = body.name
            audit(s, "device.updated", actor=actor, now=now, device_id=d.id, **changed)
            return device_dict(d, now, self.config)

    def revoke(self, device_id: str, *, actor: str) -> dict[str, Any]:
        now = self.clock()
        with self.db.write() as s:
            d = _device(s, device_id)
            d.revoked = True
            audit(s, "device.revoked", actor=actor, now=now, device_id=d.id)
        return {"id": device_id, "revoked": True}

    def nudge(self, device_id: str) -> dict[str, Any]:
        """Ask the device to send a heartbeat now (over MQTT, when the server has it)."""
        with self.db.read() as s:
            _device(s, device_id)
        return {"sent": self.notifier.nudge([device_id])}


def _device(s: Session, device_id: str) -> Device:
    d = s.get(Device, device_id)
    if d is None:
        raise NotFoundError(f"unknown device {device_id!r}", hint="list devices with: edgefleet devices list")
    return d
