"""Enrollment: the repository's trust root verified first, then a one-time token exchanged for a device token.

The device is given a root.json to pin (any version the repository ever had). Before the token is spent,
a TUF refresh from that root against the server's repository walks the root chain to the newest root the
given one vouches for; a repository that does not chain from it is refused with nothing consumed. The
newest trusted root is what the device pins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgefleet._fs import atomic_write
from edgefleet.agent._config import AgentConfig
from edgefleet.agent._director import DirectorClient
from edgefleet.agent._fetcher import HttpxFetcher
from edgefleet.agent._identity import DeviceIdentity, https_trust_check
from edgefleet.agent._tuf import TrustedRepository
from edgefleet.errors import ConfigError, DownloadError, EdgefleetError, InputError, VerificationError
from edgefleet.protocol import EnrollRequest, Heartbeat
from edgefleet.tls import client_context

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
    repository_url: str | None = None,
    name: str | None = None,
    device_class: str | None = None,
    tags: dict[str, str] | None = None,
    transport: Any = None,
    ca: Path | None = None,
    system_ca: bool = False,
) -> Credentials:
    """Verify the server's repository from the given root, then exchange a one-time enrollment token for a
    device token and pin the newest trusted root.

    Args:
        root_json: a root.json of the repository (any version: newer ones are reached through TUF's chain).
        repository_url: where the repository is served (default: ``<server_url>/repository/``).
        transport: an httpx transport for the director and the repository (tests).
        ca: the control plane's CA certificate, pinned for every later connection (required for https
            unless ``system_ca``).
        system_ca: trust the system store for an https control plane (a publicly trusted certificate).

    The device makes its own key and sends a CSR; the certificate it gets (with the key, 0600 in
    ``device.pem``) is its identity toward the control plane (mutual TLS), and the director key it gets is
    pinned: from then on it acts only on director answers signed by it.

    Raises:
        VerificationError: the repository does not chain from the given root (the token is not spent), or
            the server names another root than the newest trusted one.
        DownloadError: the repository could not be reached (the token is not spent).
        InputError: the token or name is malformed (nothing sent).
        AuthError: the server refused the token.
        ServerUnreachable: the server did not answer.
    """
    from edgefleet.power import probe

    https_trust_check(server_url, ca, system_ca)
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
    identity = DeviceIdentity(state)
    key_pem, csr = identity.new_csr(name or "edgefleet-device")  # the key never leaves the device
    try:
        req = EnrollRequest(token=token, name=name, hardware=hw, csr=csr.decode())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise InputError(
            f"invalid enrollment request: {where}: {first.get('msg')}",
            hint="pass the one-time token an operator created (`edgefleet devices tokens create`)"
            if where == "token"
            else "fix the device name or tags",
        ) from None
    repo_url = repository_url or server_url.rstrip("/") + "/repository/"
    verify: Any = True
    if ca is not None:  # the pinned CA only; an old device certificate in this folder is not presented
        identity.pin_ca(ca)
        verify = client_context(identity.ca_file)
    # before the token is spent
    trusted = trusted_root(config, root, repo_url, transport=transport, verify=verify)
    client = DirectorClient(server_url, timeout=config.request_timeout_s, transport=transport, verify=verify)
    try:
        resp = client.enroll(req)
    finally:
        client.close()
    digest = hashlib.sha256(trusted).hexdigest()
    if resp.root_json_sha256 and resp.root_json_sha256 != digest:
        raise VerificationError(
            "the server names another root.json than the newest one its repository at "
            f"{repo_url} chains to from the given root",
            hint="the server and its repository disagree (a rotation in progress?); enroll again, or pass "
            "--repository-url if the repository is served elsewhere",
            expected=resp.root_json_sha256,
            got=digest,
        )
    identity.save(key_pem, resp.device_cert, resp.director_key)
    atomic_write(state / "root.json", trusted, mode=0o644)
    # The profile as enrolled: later heartbeats re-probe but keep the class chosen at enrollment.
    atomic_write(state / "hardware.json", hw.model_dump_json().encode(), mode=0o644)
    creds = Credentials(
        resp.device_id, resp.device_token, server_url.rstrip("/"), resp.repository_url, resp.poll_interval_s
    )
    creds.save(state)
    log.info("enrolled as %s", resp.device_id, extra={"device_id": resp.device_id})
    _confirm(config, creds, identity, hw, transport)
    return creds


def _confirm(
    config: AgentConfig, creds: Credentials, identity: DeviceIdentity, hw: Any, transport: Any
) -> None:
    """Report once with the new credentials, so the control plane knows the device holds them.

    Until a device reports it is ``pending``: never online, never admitted to a wave. This first report
    proves the credentials were stored and work (over mutual TLS when the server gave a certificate); if it
    fails, the enrollment still stands and ``agent run``'s first heartbeat confirms it. Its answer is not
    acted on: the agent acts only on directives it receives while running.
    """
    client = DirectorClient(
        creds.server_url,
        token=creds.device_token,
        timeout=config.request_timeout_s,
        transport=transport,
        verify=identity.verify(),
    )
    try:
        client.heartbeat(creds.device_id, Heartbeat(device_id=creds.device_id, state="enrolled", hardware=hw))
    except EdgefleetError as e:
        log.warning("enrolled, but the first report failed (agent run will send it): %s", e.message)
    finally:
        client.close()


def trusted_root(
    config: AgentConfig, root: bytes, repository_url: str, *, transport: Any = None, verify: Any = True
) -> bytes:
    """The newest root.json that ``root`` vouches for, by a full TUF refresh of the repository.

    python-tuf's updater walks the root chain (each new root signed by its predecessor's threshold) and
    verifies timestamp, snapshot and targets under the newest root; nothing is kept but that root.

    Raises:
        VerificationError: the repository does not chain from ``root`` (another repository, tampered).
        DownloadError: the repository is unreachable.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".enroll-tuf-", dir=config.state_dir))
    fetcher = HttpxFetcher(
        retries=1,
        timeout=config.request_timeout_s,
        transport=transport,
        max_metadata_bytes=config.max_metadata_bytes,
        verify=verify,
    )
    try:
        repo = TrustedRepository(
            tmp, repository_url, root, fetcher, max_metadata_bytes=config.max_metadata_bytes
        )
        try:
            repo.refresh()
        except VerificationError as e:
            raise VerificationError(
                f"the repository at {repository_url} does not verify from the given root.json: {e}",
                hint="get root.json from the repository owner over a trusted channel (any older root "
                "version works after a rotation); the enrollment token was not used",
                repository_url=repository_url,
            ) from e
        except DownloadError as e:
            cause: BaseException = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise DownloadError(
                f"cannot read the repository at {repository_url} to verify the root "
                f"({type(cause).__name__}: {cause})",
                hint="check --server (and --repository-url if the repository is served elsewhere); "
                "the enrollment token was not used",
                repository_url=repository_url,
            ) from e
        return (tmp / "root.json").read_bytes()
    finally:
        fetcher.close()
        shutil.rmtree(tmp, ignore_errors=True)
