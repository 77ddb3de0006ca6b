"""HTTP surface of update policies (issue 15 item 7); ``install_update_policies(app, ctx)`` wires it.

Operator routes (viewer reads, deployer writes; every write is audited):

* ``GET /v1/update-policies`` — the policies, highest priority first.
* ``GET /v1/update-policies/{name}``, ``PUT /v1/update-policies/{name}`` (an ``UpdatePolicyIn``),
  ``DELETE /v1/update-policies/{name}``.

The service is ``app.state.update_policies``; the director (``DeviceService``) and the rollout engine
read the same instance, so a write here is in force at the next heartbeat.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path

from edgefleet.server._auth import Operator, Role
from edgefleet.server._http import ERRORS, operator
from edgefleet.server._update_policies import NAME_PATTERN, UpdatePolicies, UpdatePolicyIn

__all__ = ["install_update_policies"]

Viewer = Annotated[Operator, Depends(operator(Role.viewer))]
Deployer = Annotated[Operator, Depends(operator(Role.deployer))]
PolicyName = Annotated[str, Path(pattern=NAME_PATTERN)]
T = ["update policies"]


def install_update_policies(app: FastAPI, ctx: Any) -> UpdatePolicies:
    """Add the update-policy routes; the director and the engine hold back updates by these policies."""
    policies = UpdatePolicies(ctx.db, clock=ctx.clock)
    app.state.update_policies = policies
    ctx.devices.update_policies = policies
    ctx.engine.update_policies = policies

    @app.get("/v1/update-policies", tags=T, responses=ERRORS, summary="Update policies per device group")
    def list_policies(_: Viewer) -> list[dict[str, Any]]:
        return policies.list()

    @app.get("/v1/update-policies/{name}", tags=T, responses=ERRORS, summary="One update policy")
    def get_policy(name: PolicyName, _: Viewer) -> dict[str, Any]:
        return policies.get(name)

    @app.put(
        "/v1/update-policies/{name}", tags=T, responses=ERRORS, summary="Set a device group's update policy"
    )
    def put_policy(name: PolicyName, body: UpdatePolicyIn, me: Deployer) -> dict[str, Any]:
        return policies.put(name, body, actor=me.actor)

    @app.delete("/v1/update-policies/{name}", tags=T, responses=ERRORS, summary="Remove an update policy")
    def delete_policy(name: PolicyName, me: Deployer) -> dict[str, Any]:
        return policies.delete(name, actor=me.actor)

    return policies
