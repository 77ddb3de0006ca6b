"""Device power/thermal policies pushed per device group (issue 15, item 4).

A device policy is the same declarative document as a bundle's ``device_policy.yaml``
(:class:`edgefleet.power.Policy`: rules over battery, power source, temperature headroom, time of day and
link, with hysteresis and dwell). Here an operator sets one per device group (a selector; the highest
``priority`` that matches wins) without a new release; the agent reads its own with its telemetry and
puts it in force over its bundle's (a policy file in the agent's own configuration still wins: the
person at the device decides last).

Routes: ``GET /v1/device-policies`` (viewer), ``PUT``/``DELETE /v1/device-policies/{name}`` (deployer,
audited), ``GET /v1/devices/{id}/device-policy`` (the device itself).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Float, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.errors import EdgefleetError, NotFoundError, ValidationError
from edgefleet.server._audit import audit
from edgefleet.server._auth import Operator, Role
from edgefleet.server._db import Database
from edgefleet.server._http import DEVICE_ID_RE, ERRORS, AuthenticatedDevice, operator
from edgefleet.server._models import Base, Device, JSONType
from edgefleet.server._selector import Selector, group_of

__all__ = ["DevicePolicies", "DevicePolicyRow", "install_device_policies"]


class DevicePolicyRow(Base):
    """The power/thermal policy of the devices ``selector`` matches (highest ``priority`` first)."""

    __tablename__ = "device_policies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    selector: Mapped[str] = mapped_column(String(1024))
    priority: Mapped[int] = mapped_column(Integer)
    policy: Mapped[dict[str, Any]] = mapped_column(JSONType)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(128))


class DevicePolicyIn(BaseModel):
    """``PUT /v1/device-policies/{name}``: a ``power.Policy`` document for the devices ``selector`` matches."""

    model_config = ConfigDict(extra="forbid")

    selector: str = Field("*", max_length=1024)
    priority: int = Field(0, ge=-1000, le=1000, description="the highest matching priority wins")
    policy: dict[str, Any] = Field(description="min_dwell_s, hysteresis, rules[name, when, actions]")


def _row_dict(r: DevicePolicyRow) -> dict[str, Any]:
    return {
        "name": r.name,
        "selector": r.selector,
        "priority": r.priority,
        "policy": r.policy,
        "updated_at": r.updated_at,
        "updated_by": r.updated_by,
    }


class DevicePolicies:
    """Device policies per group: set, list, delete, and the one a device is under."""

    def __init__(self, db: Database, *, clock: Any) -> None:
        self.db, self.clock = db, clock

    def set(self, name: str, body: DevicePolicyIn, *, actor: str) -> dict[str, Any]:
        from edgefleet.power import Policy

        try:
            Selector.parse(body.selector)
            doc = Policy.from_data(body.policy, origin=f"device policy {name!r}")
            policy = doc.model_dump(mode="json", exclude_none=True)
        except (ValueError, EdgefleetError) as e:
            msg = e.message if isinstance(e, EdgefleetError) else str(e)
            raise ValidationError(
                msg[:2000],
                hint="see `edgefleet device policy --help` for the rules' fields; test it with `edgefleet "
                "device policy POLICY --trace TRACE` before pushing it",
            ) from None
        now = self.clock()
        with self.db.write() as s:
            row = s.get(DevicePolicyRow, name)
            if row is None:
                row = DevicePolicyRow(name=name)
                s.add(row)
            row.selector, row.priority, row.policy = body.selector, body.priority, policy
            row.updated_at, row.updated_by = now, actor
            audit(s, "device_policy.set", actor=actor, now=now, name=name, selector=body.selector)
            return _row_dict(row)

    def list(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(DevicePolicyRow).order_by(DevicePolicyRow.priority.desc(), DevicePolicyRow.name)
            return [_row_dict(r) for r in s.scalars(q)]

    def delete(self, name: str, *, actor: str) -> dict[str, Any]:
        with self.db.write() as s:
            row = s.get(DevicePolicyRow, name)
            if row is None:
                raise NotFoundError(f"no device policy {name!r}", hint="list them: GET /v1/device-policies")
            s.delete(row)
            audit(s, "device_policy.delete", actor=actor, now=self.clock(), name=name)
        return {"deleted": name}

    def policy_for(self, device_id: str) -> dict[str, Any]:
        """``{"source": "group:NAME" | "none", "policy": {...} | None, "etag"}`` for one device."""
        with self.db.read() as s:
            dev = s.get(Device, device_id)
            if dev is None:
                raise NotFoundError(f"no device {device_id!r}", hint="enroll the device first")
            q = select(DevicePolicyRow).order_by(DevicePolicyRow.priority.desc(), DevicePolicyRow.name)
            row = group_of(dev, s.scalars(q))
            body: dict[str, Any] = (
                {"source": f"group:{row.name}", "policy": row.policy}
                if row
                else {"source": "none", "policy": None}
            )
        body["etag"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return body


Deployer = Annotated[Operator, Depends(operator(Role.deployer))]
Viewer = Annotated[Operator, Depends(operator(Role.viewer))]
PolicyName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,63}$")]
DeviceId = Annotated[str, Path(min_length=1, max_length=64, pattern=DEVICE_ID_RE.pattern)]


def install_device_policies(app: FastAPI, ctx: Any) -> DevicePolicies:
    """Add the device-policy routes to a control-plane app; returns the store (also ``app.state``)."""
    store = DevicePolicies(ctx.db, clock=ctx.clock)
    app.state.device_policies = store
    T = ["device policies"]

    @app.get("/v1/device-policies", tags=T, responses=ERRORS, summary="Device power policies per group")
    def list_policies(_: Viewer) -> list[dict[str, Any]]:
        return store.list()

    @app.put("/v1/device-policies/{name}", tags=T, responses=ERRORS, summary="Set a group's device policy")
    def put_policy(name: PolicyName, body: DevicePolicyIn, me: Deployer) -> dict[str, Any]:
        return store.set(name, body, actor=me.actor)

    @app.delete("/v1/device-policies/{name}", tags=T, responses=ERRORS, summary="Remove a group's policy")
    def delete_policy(name: PolicyName, me: Deployer) -> dict[str, Any]:
        return store.delete(name, actor=me.actor)

    @app.get(
        "/v1/devices/{device_id}/device-policy", tags=T, responses=ERRORS, summary="The device's power policy"
    )
    def device_policy(device_id: DeviceId, cred: AuthenticatedDevice) -> dict[str, Any]:
        return store.policy_for(device_id)

    return store
