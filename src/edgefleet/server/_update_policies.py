"""Update policies per device group (issue 15 item 7): when a device may take a rollout's new release.

A policy belongs to a device group — a selector such as ``region=eu class=pi4``, the highest ``priority``
matching wins, as for sample policies (``_samples``) — and says:

* ``windows``: maintenance windows in the group's local time (``timezone``, an IANA name), e.g.
  ``["02:00-05:00", "22:30-01:00"]``; a window whose end is before its start crosses midnight;
* ``download_only_unmetered`` / ``download_only_charging``: wait while the device's last heartbeat says its
  link is metered (``resources.metered``) or it runs on battery (``resources.power_source``); a device that
  cannot tell (the field is absent) is not held;
* ``pin``: the group stays on that version (rollouts of other versions wait), or ``defer_until``: rollouts
  wait until then.

The director applies it where it answers a heartbeat (``DeviceService``): a device a policy holds gets no
new assignment (it keeps running what it runs) and the answer's ``wait_reason`` says why; a rollout created
with ``force`` (a security fix) ignores every policy. The rollout engine counts held devices per reason
(``evaluation.held``) and never as failures. Policies are few: the service keeps them compiled in memory,
reloaded on every write here and at most ``ttl_s`` after a write by another server process.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Float, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.errors import EdgefleetError, NotFoundError
from edgefleet.server._audit import audit
from edgefleet.server._db import Database
from edgefleet.server._models import Base, JSONType
from edgefleet.server._selector import Selector

__all__ = [
    "Hold",
    "UpdatePolicy",
    "UpdatePolicyIn",
    "UpdatePolicyRow",
    "UpdatePolicies",
    "parse_window",
]

log = logging.getLogger(__name__)

_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"


class UpdatePolicyRow(Base):
    """The update policy of a device group (devices matching ``selector``, highest ``priority`` first)."""

    __tablename__ = "update_policies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    selector: Mapped[str] = mapped_column(String(1024))
    priority: Mapped[int] = mapped_column(Integer)
    policy: Mapped[dict[str, Any]] = mapped_column(JSONType)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(128))


def parse_window(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` as minutes of the day ``(start, end)``; ``end < start`` crosses midnight.

    Raises:
        ValueError: not that form, an hour or minute out of range, or an empty window (start == end).
    """
    m = _WINDOW_RE.match(text)
    if m is None:
        raise ValueError(f"window {text!r} is not HH:MM-HH:MM (e.g. 02:00-05:00)")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"window {text!r} has a time that is not on a 24-hour clock")
    start, end = h1 * 60 + m1, h2 * 60 + m2  # an end of 24:00 is midnight, the day's end
    if start == end:
        raise ValueError(f"window {text!r} is empty (start equals end); leave windows out for always")
    return start, end


class UpdatePolicy(BaseModel):
    """What a device group's update policy asks for (every field optional: the default holds nothing)."""

    model_config = ConfigDict(extra="forbid")

    windows: list[str] = Field(
        default_factory=list, max_length=16, description="maintenance windows HH:MM-HH:MM (none: any time)"
    )
    timezone: str = Field(
        "UTC", max_length=64, description="IANA time zone of the windows, e.g. Europe/Berlin"
    )
    download_only_unmetered: bool = False
    download_only_charging: bool = False
    pin: str | None = Field(None, min_length=1, max_length=64, description="the group stays on this version")
    defer_until: datetime | None = Field(
        None, description="rollouts wait until then (without an offset: in the policy's timezone)"
    )

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        for w in v:
            parse_window(w)
        return [w.replace(" ", "") for w in v]

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r}; use an IANA name such as Europe/Berlin or UTC"
            ) from None
        return v

    @model_validator(mode="after")
    def _one_of(self) -> UpdatePolicy:
        if self.pin is not None and self.defer_until is not None:
            raise ValueError("a policy pins a version or defers updates, not both")
        if self.defer_until is not None and self.defer_until.tzinfo is None:
            self.defer_until = self.defer_until.replace(tzinfo=ZoneInfo(self.timezone))
        return self


class UpdatePolicyIn(BaseModel):
    """``PUT /v1/update-policies/{name}``: the update policy of the devices ``selector`` matches."""

    model_config = ConfigDict(extra="forbid")

    selector: str = Field("*", max_length=1024)
    priority: int = Field(0, ge=-1000, le=1000, description="the highest matching priority wins")
    policy: UpdatePolicy


@dataclass(frozen=True)
class Hold:
    """Why a device waits: ``kind`` (window, metered, not_charging, pinned, deferred) and a sentence."""

    kind: str
    policy: str
    message: str


@dataclass(frozen=True)
class _Compiled:
    name: str
    selector: Selector
    windows: tuple[tuple[int, int], ...]
    window_text: str
    tz: ZoneInfo
    unmetered: bool
    charging: bool
    pin: str | None
    defer_until: float | None

    def hold(self, *, now: float, version: str, resources: Mapping[str, Any] | None) -> Hold | None:
        if self.pin is not None and version != self.pin:
            return Hold("pinned", self.name, f"update policy {self.name} pins this group to {self.pin}")
        if self.defer_until is not None and now < self.defer_until:
            until = datetime.fromtimestamp(self.defer_until, self.tz).isoformat(timespec="minutes")
            return Hold("deferred", self.name, f"update policy {self.name} defers updates until {until}")
        res = resources or {}
        if self.unmetered and res.get("metered") is True:
            return Hold("metered", self.name, f"update policy {self.name} downloads only on unmetered links")
        if self.charging and res.get("power_source") == "battery":
            return Hold("not_charging", self.name, f"update policy {self.name} downloads only while charging")
        if self.windows and not self._open(now):
            return Hold(
                "window",
                self.name,
                f"outside the maintenance window ({self.window_text} {self.tz.key}) of update policy "
                f"{self.name}; next opens {self._next_open(now)}",
            )
        return None

    def _minute(self, now: float) -> tuple[datetime, int]:
        t = datetime.fromtimestamp(now, self.tz)
        return t, t.hour * 60 + t.minute

    def _open(self, now: float) -> bool:
        _, m = self._minute(now)
        return any((a <= m < b) if a < b else (m >= a or m < b) for a, b in self.windows)

    def _next_open(self, now: float) -> str:
        t, _ = self._minute(now)
        day = t.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        best: datetime | None = None
        for a, _b in self.windows:
            for d in (0, 1):
                cand = (day + timedelta(days=d, minutes=a)).replace(tzinfo=self.tz)
                if cand > t and (best is None or cand < best):
                    best = cand
        return best.isoformat(timespec="minutes") if best else "-"


def _compile_all(rows: list[UpdatePolicyRow]) -> list[_Compiled]:
    """Compile the stored policies; one that no longer validates (say its time zone left the tz database)
    is skipped and logged, never an error on the heartbeat path."""
    out = []
    for r in rows:
        try:
            out.append(_compile(r))
        except (ValueError, EdgefleetError) as e:
            log.error("update policy %s is not valid any more and is ignored: %s", r.name, e)
    return out


def _compile(row: UpdatePolicyRow) -> _Compiled:
    p = UpdatePolicy.model_validate(row.policy)
    return _Compiled(
        name=row.name,
        selector=Selector.parse(row.selector),
        windows=tuple(parse_window(w) for w in p.windows),
        window_text=", ".join(p.windows),
        tz=ZoneInfo(p.timezone),
        unmetered=p.download_only_unmetered,
        charging=p.download_only_charging,
        pin=p.pin,
        defer_until=p.defer_until.timestamp() if p.defer_until is not None else None,
    )


class UpdatePolicies:
    """Stores update policies (audited writes) and answers, from memory, whether a device waits."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time, ttl_s: float = 5.0) -> None:
        self.db = db
        self.clock = clock
        self.ttl_s = ttl_s
        self._compiled: list[_Compiled] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        # device id (heartbeats) or ("engine", id) -> (its selector attributes' signature, its group's
        # policy): matching selectors is most of a hold's cost, and a device's attributes rarely change;
        # emptied when the policies change
        self._groups: dict[Any, tuple[Any, _Compiled | None]] = {}
        self._sig: tuple[Any, ...] | None = None  # what the compiled policies were made from
        self._generation = 0  # counts the changes of the policies this process has seen

    # --- writes (operators) ---------------------------------------------------------------------

    def put(self, name: str, body: UpdatePolicyIn, *, actor: str) -> dict[str, Any]:
        selector = Selector.parse(body.selector).text
        now = self.clock()
        policy = body.policy.model_dump(mode="json")
        with self.db.write() as s:
            row = s.get(UpdatePolicyRow, name)
            if row is None:
                row = UpdatePolicyRow(name=name)
                s.add(row)
            row.selector, row.priority, row.policy = selector, body.priority, policy
            row.updated_at, row.updated_by = now, actor
            audit(s, "update_policy.set", actor=actor, now=now, name=name, selector=selector, policy=policy)
            out = _as_dict(row)
        self.invalidate()
        return out

    def delete(self, name: str, *, actor: str) -> dict[str, Any]:
        with self.db.write() as s:
            row = s.get(UpdatePolicyRow, name)
            if row is None:
                raise NotFoundError(
                    f"no update policy {name!r}", hint="list them: edgefleet update-policy list"
                )
            s.delete(row)
            audit(s, "update_policy.delete", actor=actor, now=self.clock(), name=name)
        self.invalidate()
        return {"deleted": name}

    # --- reads ------------------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(UpdatePolicyRow).order_by(UpdatePolicyRow.priority.desc(), UpdatePolicyRow.name)
            return [_as_dict(r) for r in s.scalars(q)]

    def get(self, name: str) -> dict[str, Any]:
        with self.db.read() as s:
            row = s.get(UpdatePolicyRow, name)
            if row is None:
                raise NotFoundError(
                    f"no update policy {name!r}", hint="list them: edgefleet update-policy list"
                )
            return _as_dict(row)

    def invalidate(self) -> None:
        with self._lock:
            self._compiled = None

    def fresh(self) -> bool:
        """True when ``compiled`` answers from memory (no database read)."""
        return self._compiled is not None and time.monotonic() - self._loaded_at < self.ttl_s

    def compiled(self) -> list[_Compiled]:
        """The policies, highest priority first (cached; reloaded after a write or ``ttl_s``)."""
        c = self._compiled
        if c is not None and time.monotonic() - self._loaded_at < self.ttl_s:
            return c
        with self.db.read() as s:
            q = select(UpdatePolicyRow).order_by(UpdatePolicyRow.priority.desc(), UpdatePolicyRow.name)
            rows = list(s.scalars(q))
        sig = tuple((r.name, r.selector, r.priority, json.dumps(r.policy, sort_keys=True)) for r in rows)
        with self._lock:
            if sig != self._sig or self._compiled is None:
                self._compiled, self._sig, self._groups = _compile_all(rows), sig, {}
                self._generation += 1
            self._loaded_at = time.monotonic()
            return self._compiled

    def hold(
        self,
        attrs: Mapping[str, str | None] | Callable[[], Mapping[str, str | None]],
        *,
        version: str,
        resources: Mapping[str, Any] | None,
        now: float,
        device: tuple[Any, Any] | None = None,
    ) -> Hold | None:
        """Why the device with selector attributes ``attrs`` must not take ``version`` now (None: it may).

        ``attrs`` may be a function, called only when there is a policy to match. ``device``: ``(id,
        signature of its attributes)``; the policy its group matched is remembered while that holds.
        """
        policies = self.compiled()
        if not policies:
            return None
        groups = self._groups
        seen = groups.get(device[0]) if device is not None else None
        if seen is not None and seen[0] == device[1]:
            policy = seen[1]
        else:
            a = attrs() if callable(attrs) else attrs
            policy = next((p for p in policies if p.selector.matches(a)), None)
            if device is not None:
                if len(groups) > 500_000:
                    groups.clear()
                groups[device[0]] = (device[1], policy)
        return None if policy is None else policy.hold(now=now, version=version, resources=resources)

    def epoch(self, now: float) -> tuple[int, int]:
        """Moves when the policies change or a deferral ends: devices that sat out rollouts may join."""
        policies = self.compiled()
        ended = sum(1 for p in policies if p.defer_until is not None and p.defer_until <= now)
        return self._generation, ended

    def parked(
        self,
        attrs: Mapping[str, str | None] | Callable[[], Mapping[str, str | None]],
        *,
        version: str,
        now: float,
        device: tuple[Any, Any] | None = None,
    ) -> Hold | None:
        """The hold of a device whose group is pinned to another version or deferred (not a passing state
        such as a closed window): rollouts do not admit it."""
        hold = self.hold(attrs, version=version, resources=None, now=now, device=device)
        return hold if hold is not None and hold.kind in ("pinned", "deferred") else None


def _as_dict(r: UpdatePolicyRow) -> dict[str, Any]:
    return {
        "name": r.name,
        "selector": r.selector,
        "priority": r.priority,
        "policy": r.policy,
        "updated_at": r.updated_at,
        "updated_by": r.updated_by,
    }
