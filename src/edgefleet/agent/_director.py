"""HTTP client for the control plane (director): enrollment, heartbeats, telemetry uploads."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from edgefleet.errors import AgentError, AuthError, ServerError
from edgefleet.protocol import (
    EnrollRequest,
    EnrollResponse,
    Heartbeat,
    HeartbeatResponse,
    TelemetryBatch,
)

__all__ = ["DirectorClient", "ServerUnreachable"]

log = logging.getLogger(__name__)


class ServerUnreachable(AgentError):
    """The control plane did not answer (connection refused, timeout, 5xx); the agent backs off."""

    code = "server_unreachable"
    status_code = 503


class DirectorClient:
    """Talks the control plane's JSON protocol (``edgefleet.protocol`` types) over httpx."""

    def __init__(
        self,
        server_url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        verify: Any = True,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        headers = {"User-Agent": "edgefleet-agent"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(
            base_url=self.server_url, timeout=timeout, headers=headers, transport=transport, verify=verify
        )

    def close(self) -> None:
        self.client.close()

    def post(self, path: str, body: Any) -> dict[str, Any]:
        """POST a protocol message (or a JSON-able dict); the answer's JSON object."""
        content = body.model_dump_json() if hasattr(body, "model_dump_json") else json.dumps(body)
        return self._send("POST", path, content)

    def get(self, path: str) -> dict[str, Any]:
        """GET a JSON object (e.g. the device's sample policy)."""
        return self._send("GET", path, None)

    def _send(self, method: str, path: str, content: str | None) -> dict[str, Any]:
        try:
            r = self.client.request(
                method,
                path,
                content=content,
                headers={"Content-Type": "application/json"} if content else None,
            )
        except httpx.HTTPError as e:
            raise ServerUnreachable(
                f"control plane {self.server_url} unreachable: {e!r}",
                hint="the agent keeps serving the active model and retries",
            ) from e
        if r.status_code >= 500:
            raise ServerUnreachable(
                f"control plane answered {r.status_code} on {path}", hint="the agent retries with backoff"
            )
        if r.status_code in (401, 403):
            raise AuthError(
                f"control plane refused the device credentials on {path} ({r.status_code}): {_message(r)}",
                hint="re-enroll the device with a new enrollment token",
            )
        if r.status_code >= 400:
            raise ServerError(
                f"control plane refused {path} ({r.status_code}): {_message(r)}",
                hint="check the agent and server versions",
            )
        try:
            obj = r.json()
        except ValueError as e:
            raise ServerError(f"control plane sent invalid JSON on {path}") from e
        if not isinstance(obj, dict):
            raise ServerError(f"control plane sent a non-object on {path}")
        return obj

    def enroll(self, req: EnrollRequest) -> EnrollResponse:
        return EnrollResponse.model_validate(self.post("/v1/enroll", req))

    def heartbeat(self, device_id: str, hb: Heartbeat) -> HeartbeatResponse:
        return HeartbeatResponse.model_validate(self.post(f"/v1/devices/{device_id}/heartbeat", hb))

    def telemetry(self, device_id: str, batch: TelemetryBatch) -> dict[str, Any]:
        return self.post(f"/v1/devices/{device_id}/telemetry", batch)


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
        return str(body.get("message") or body.get("detail") or body)[:500]
    except ValueError:
        return r.text[:200]
