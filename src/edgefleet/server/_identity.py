"""The control plane's identity toward devices: its CA (device certificates) and its director key.

The CA signs each device's CSR at enrollment and renewal (subject = device id) and is what the TLS listener
verifies client certificates against (mutual TLS). The director key (Ed25519) signs every heartbeat answer,
so a device acts only on decisions this server made, numbered and dated (``protocol._directive``).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write
from edgefleet.errors import InputError
from edgefleet.protocol import Assignment
from edgefleet.protocol._directive import Directive, new_director_key, sign_directive
from edgefleet.server._config import ServerConfig
from edgefleet.tls import CA_CERT, CertificateAuthority, cert_expires

__all__ = ["ServerIdentity", "prepare_data_dir"]

log = logging.getLogger(__name__)

MIN_DIRECTIVE_TTL_S = 300.0


def prepare_data_dir(cfg: ServerConfig) -> None:
    """Create the data folder 0700 and the default SQLite file 0600 (tokens and keys live there)."""
    d = cfg.data_dir
    if not d.exists():
        d.mkdir(parents=True, mode=0o700)
        os.chmod(d, 0o700)  # mkdir's mode is masked by the umask
    if cfg.db_url is None:
        db = d / "edgefleet.sqlite"
        if not db.exists():
            os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(db, 0o600)


class ServerIdentity:
    """The CA (loaded, or created when first needed) and the director key of one server."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._ca: CertificateAuthority | None = None
        self.director_private, self.director_public = self._director_key(cfg.director_key_path)
        if cfg.ca_dir is not None or cfg.tls or (cfg.ca_path / CA_CERT).exists():
            self.ca()  # TLS on: the listener needs the CA now to verify client certificates

    @staticmethod
    def _director_key(path: Path) -> tuple[bytes, bytes]:
        from cryptography.hazmat.primitives import serialization

        if not path.exists():
            priv, _ = new_director_key()
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, priv, mode=0o600)
            log.warning("created the director key %s (devices pin its public key at enrollment)", path)
        priv = path.read_bytes()
        pub = (
            serialization.load_pem_private_key(priv, password=None)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return priv, pub

    def ca(self) -> CertificateAuthority:
        """The device CA; the first call creates DATA/ca when no CA was given and none is there."""
        with self._lock:
            if self._ca is None:
                path = self.cfg.ca_path
                if self.cfg.ca_dir is None and not (path / CA_CERT).exists():
                    self._ca = CertificateAuthority.init(path, name="edgefleet device CA")
                    log.warning(
                        "created a device CA in %s: it signs device certificates; keep ca.key private", path
                    )
                else:
                    self._ca = CertificateAuthority.load(path)
            return self._ca

    @property
    def ca_cert_file(self) -> Path:
        return self.ca().directory / CA_CERT  # type: ignore[operator]

    def sign_csr(self, csr_pem: str, device_id: str) -> tuple[str, str, float]:
        """``(device certificate PEM, CA certificate PEM, expiry as UNIX seconds)`` for a device's CSR."""
        ca = self.ca()
        try:
            issued = ca.sign_device_csr(csr_pem.encode(), device_id, days=self.cfg.device_cert_days)
        except InputError as e:
            raise type(e)(f"csr: {e.message}", hint=e.hint) from e
        return issued.cert_pem.decode(), ca.cert_pem.decode(), cert_expires(issued.cert_pem).timestamp()

    def sign(
        self,
        device_id: str,
        seq: int,
        now: float,
        assignment: dict[str, Any] | None,
        commands: list[str],
        federated: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The signed directive of one heartbeat answer (as JSON data)."""
        ttl = max(MIN_DIRECTIVE_TTL_S, 3 * self.cfg.poll_interval_s)
        issued = datetime.fromtimestamp(now, UTC)
        d = Directive(
            device_id=device_id,
            seq=seq,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=ttl),
            assignment=Assignment.model_validate(assignment) if assignment is not None else None,
            commands=commands,
            federated=federated,
        )
        return sign_directive(self.director_private, d).model_dump(mode="json")


@functools.lru_cache(maxsize=4096)
def device_of_cert(der: bytes) -> str | None:
    """The device id (common name) of a verified client certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    return str(names[0].value) if names else None
