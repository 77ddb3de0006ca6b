"""Enrollment: a one-time token exchanged for a device token, the repository's root.json pinned."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write
from edgefleet.agent._config import AgentConfig
from edgefleet.agent._director import DirectorClient
from edgefleet.errors import ConfigError, VerificationError
from edgefleet.protocol import EnrollRequest

__all__ = ["Credentials", "enroll"]

log = logging.getLogger(__name__)


@dataclass
class Credentials:
    """What enrollment gave this device (stored 0600 in ``credentials.json``)."""

    device_id: str
    device_token: str
    server_url: str
    repository_url: str
    poll_interval_s: float

    @classmethod
    def load(cls, state_dir: Path) -> Credentials:
        path = Path(state_dir) / "credentials.json"
        try:
            obj = json.loads(path.read_text())
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__})
        except FileNotFoundError as e:
            raise ConfigError(
                f"{state_dir} holds no credentials: this device is not enrolled",
                hint="run `edgefleet agent enroll --token ... --root root.json --server URL`",
            ) from e
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is unreadable: {e}", hint="enroll the device again") from e

    def save(self, state_dir: Path) -> None:
        atomic_write(
            Path(state_dir) / "credentials.json", json.dumps(self.__dict__, indent=1).encode(), mode=0o600
        )


def enroll(
    config: AgentConfig,
    *,
    token: str,
    root_json: Path | bytes,
    server_url: str,
    name: str | None = None,
    device_class: str | None = None,
    tags: dict[str, str] | None = None,
    transport: Any = None,
) -> Credentials:
    """Exchange a one-time enrollment token for a device token; pin the repository's root.json.

    Raises:
        VerificationError: the server names a different root.json than the one given.
        AuthError: the server refused the token.
        ServerUnreachable: the server did not answer.
    """
    from edgefleet.power import probe

    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    root = root_json if isinstance(root_json, bytes) else Path(root_json).read_bytes()
    try:
        from tuf.api.metadata import Metadata, Root

        Metadata[Root].from_bytes(root)
    except Exception as e:
        raise VerificationError(
            f"the given root.json is not TUF root metadata: {e}",
            hint="pass the repository's root.json (from `edgefleet registry init`)",
        ) from e
    hw = probe(state, device_class_override=device_class, tags=tags)
    client = DirectorClient(server_url, timeout=config.request_timeout_s, transport=transport)
    try:
        resp = client.enroll(EnrollRequest(token=token, name=name, hardware=hw))
    finally:
        client.close()
    digest = hashlib.sha256(root).hexdigest()
    if resp.root_json_sha256 and resp.root_json_sha256 != digest:
        raise VerificationError(
            "the server's root.json differs from the one this device was given to pin",
            hint="get root.json from the repository owner over a trusted channel and enroll again",
            expected=resp.root_json_sha256,
            got=digest,
        )
    atomic_write(state / "root.json", root, mode=0o644)
    # The profile as enrolled: later heartbeats re-probe but keep the class chosen at enrollment.
    atomic_write(state / "hardware.json", hw.model_dump_json().encode(), mode=0o644)
    creds = Credentials(
        resp.device_id, resp.device_token, server_url.rstrip("/"), resp.repository_url, resp.poll_interval_s
    )
    creds.save(state)
    log.info("enrolled as %s", resp.device_id, extra={"device_id": resp.device_id})
    return creds
