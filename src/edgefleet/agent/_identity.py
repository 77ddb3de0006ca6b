"""The device's identity toward its control plane: pinned CA, own key and certificate, pinned director key.

All of it lives in the state directory, written at enrollment:

- ``ca.crt``: the control plane's CA, pinned (``agent enroll --ca``); without it an https server is trusted
  through the system store only when enrollment was told ``--system-ca``.
- ``device.pem``: the device's own key (made here, never sent) and its certificate (subject = device id), one
  0600 file, so a renewal swaps both in one atomic rename. It is presented on every connection (mutual TLS).
- ``director.pub``: the public key that signs the director's answers; from then on the agent acts only on an
  answer that verifies, is fresh and is not older than the last it acted on (``accept``).
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write
from edgefleet.errors import ConfigError, EdgefleetError, VerificationError
from edgefleet.protocol import HeartbeatResponse, RenewRequest, RenewResponse
from edgefleet.protocol._directive import verify_directive
from edgefleet.tls import cert_expires, client_context, new_key_and_csr

__all__ = ["DeviceIdentity"]

log = logging.getLogger(__name__)

CA_FILE = "ca.crt"
DEVICE_FILE = "device.pem"
DIRECTOR_FILE = "director.pub"
RENEW_AT_FRACTION = 1 / 3  # renew when less than this part of the certificate's lifetime is left


def https_trust_check(server_url: str, ca: Path | None, system_ca: bool) -> None:
    """An https control plane needs its CA pinned, or an explicit choice of the system store."""
    if server_url.lower().startswith("https://") and ca is None and not system_ca:
        raise ConfigError(
            f"{server_url} is https but no CA is pinned",
            hint="pass --ca ca.crt (the control plane's CA, from 'edgefleet certs init'), or --system-ca "
            "if the server has a publicly trusted certificate",
        )


class DeviceIdentity:
    """The identity files of one state directory, and what the agent does with them."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._ctx: ssl.SSLContext | None = None
        self._expires: datetime | None = None
        self._issued: datetime | None = None
        self.refused = 0  # director answers refused by this process (counted, logged)

    @property
    def ca_file(self) -> Path:
        return self.state_dir / CA_FILE

    @property
    def device_file(self) -> Path:
        return self.state_dir / DEVICE_FILE

    @property
    def director_file(self) -> Path:
        return self.state_dir / DIRECTOR_FILE

    # --- enrollment ------------------------------------------------------------------------------

    def pin_ca(self, ca: Path) -> None:
        try:
            data = Path(ca).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read --ca {ca}: {e.strerror or e}", hint="give the CA's ca.crt") from e
        if b"BEGIN CERTIFICATE" not in data:
            raise ConfigError(f"{ca} is not a PEM certificate", hint="give the control plane's ca.crt")
        atomic_write(self.ca_file, data, mode=0o644)

    def new_csr(self, name: str) -> tuple[bytes, bytes]:
        """A fresh key and its CSR (the key stays here: it is written with the certificate)."""
        return new_key_and_csr(name)

    def save(self, key_pem: bytes, cert_pem: str | None, director_key: str | None) -> None:
        """Store what enrollment (or a renewal) gave: key and certificate in one 0600 file, the director key."""
        if cert_pem:
            atomic_write(self.device_file, key_pem + cert_pem.encode(), mode=0o600)
            self._expires = None
            if self._ctx is not None:  # new connections present the new certificate
                self._ctx.load_cert_chain(str(self.device_file), str(self.device_file))
        if director_key:
            atomic_write(self.director_file, director_key.encode(), mode=0o644)

    # --- TLS ---------------------------------------------------------------------------------------

    def verify(self) -> ssl.SSLContext | bool:
        """httpx's ``verify`` for the control plane: the pinned CA only, and this device's certificate.

        One context shared by the director client and the repository fetcher; a renewal loads the new
        certificate into it. Without pinned CA or certificate: the default (system store).
        """
        if self._ctx is None:
            ca = self.ca_file if self.ca_file.is_file() else None
            dev = self.device_file if self.device_file.is_file() else None
            if ca is None and dev is None:
                return True
            self._ctx = client_context(ca, cert=dev, key=dev)
        return self._ctx

    # --- renewal -----------------------------------------------------------------------------------

    def renewal_due(self, now: datetime | None = None) -> bool:
        if not self.device_file.is_file():
            return False
        if self._expires is None:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(self.device_file.read_bytes())
            self._issued, self._expires = cert.not_valid_before_utc, cert.not_valid_after_utc
        now = now or datetime.now(UTC)
        assert self._issued is not None
        return (self._expires - now) < (self._expires - self._issued) * RENEW_AT_FRACTION

    def renew(self, post: Any, device_id: str) -> None:
        """Ask for a certificate for a new key (``post(path, RenewRequest) -> dict``) and swap both in."""
        key_pem, csr = new_key_and_csr(device_id)
        resp = RenewResponse.model_validate(
            post(f"/v1/devices/{device_id}/certificate", RenewRequest(csr=csr.decode()))
        )
        self.save(key_pem, resp.device_cert, None)
        log.info("renewed the device certificate; it expires %s", cert_expires(resp.device_cert.encode()))

    # --- director answers --------------------------------------------------------------------------

    def accept(self, resp: HeartbeatResponse, journal: Any, device_id: str) -> HeartbeatResponse:
        """The answer to act on: its verified directive's assignment and commands (none when refused).

        Without a pinned director key (a device enrolled before signed answers) the answer is taken as it is.
        Commands run only from a directive newer than the last one whose commands ran.
        """
        if not self.director_file.is_file():
            return resp
        st = journal.state
        try:
            if resp.signed is None:
                raise VerificationError(
                    "the director answer is not signed", hint="a man in the middle, or an old server"
                )
            d = verify_directive(
                self.director_file.read_bytes(), resp.signed, device_id=device_id, last_seq=st.director_seq
            )
        except EdgefleetError as e:
            self.refused += 1
            st.directives_refused += 1
            log.warning("director answer refused (%d so far): %s", st.directives_refused, e)
            journal.event("directive_refused", reason=str(e)[:300])
            journal.save()
            return resp.model_copy(update={"assignment": None, "commands": [], "federated": None})
        commands = list(d.commands)
        if commands and st.director_commands_seq is not None and d.seq <= st.director_commands_seq:
            log.warning("director answer #%d repeats commands already run: ignored", d.seq)
            commands = []
        st.director_seq = d.seq
        if commands:
            st.director_commands_seq = d.seq  # saved before they run: a replay never repeats them
        journal.save()
        return resp.model_copy(
            update={"assignment": d.assignment, "commands": commands, "federated": d.federated}
        )
