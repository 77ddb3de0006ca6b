"""A small private certificate authority: server certificates with SANs, device certificates from CSRs.

Keys are ECDSA P-256 (small, fast on a Raspberry Pi, accepted by every TLS stack). Private keys are written
0600 and may be encrypted with a passphrase; certificates are PEM. Device certificates name the device id as
their subject's common name and are short-lived: devices renew them, revocation is checked by the server
against its device table (a revoked device is refused on its next request).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet._fs import atomic_write
from edgefleet.errors import ConfigError, InputError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CertificateAuthority",
    "IssuedCert",
    "cert_common_name",
    "cert_expires",
    "new_key_and_csr",
]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
MAX_CSR_BYTES = 16 << 10
MAX_CERT_BYTES = 64 << 10


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _load_key(data: bytes, where: str, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as e:  # encrypted without a passphrase, or a passphrase for a plain key
        raise ConfigError(
            f"{where}: {e}", hint="give the CA passphrase (EDGEFLEET_CA_PASSPHRASE or --passphrase-file)"
        ) from e
    except ValueError as e:
        raise ConfigError(
            f"{where} is not a readable private key (wrong passphrase or corrupted): {e}",
            hint="check the passphrase, or create a new CA with 'edgefleet certs init'",
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{where} is not an EC private key", hint="create it with 'edgefleet certs init'")
    return key


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _load_cert(data: bytes, where: str) -> x509.Certificate:
    if len(data) > MAX_CERT_BYTES:
        raise InputError(
            f"{where} is {len(data)} bytes, more than a certificate", hint="give a PEM certificate"
        )
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise InputError(f"{where} is not a PEM certificate: {e}", hint="give a PEM certificate") from e


def cert_common_name(cert_pem: bytes) -> str:
    """The subject common name of a PEM certificate (a device certificate's device id)."""
    cert = _load_cert(cert_pem, "certificate")
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def cert_expires(cert_pem: bytes) -> dt.datetime:
    """When a PEM certificate stops being valid (UTC)."""
    return _load_cert(cert_pem, "certificate").not_valid_after_utc


def new_key_and_csr(common_name: str) -> tuple[bytes, bytes]:
    """A fresh device key (PEM, unencrypted: it lives 0600 in the agent's state) and a CSR for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key, None), csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and, when the CA made the key too, its private key (PEM)."""

    cert_pem: bytes
    key_pem: bytes | None = None

    def write(self, cert_path: Path, key_path: Path | None = None) -> None:
        atomic_write(cert_path, self.cert_pem, mode=0o644)
        if self.key_pem is not None and key_path is not None:
            atomic_write(key_path, self.key_pem, mode=0o600)


class CertificateAuthority:
    """The control plane's CA: ``ca.crt`` (public, pinned by devices) and ``ca.key`` (0600, optionally encrypted)."""

    def __init__(
        self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path | None = None
    ):
        self.cert = cert
        self.key = key
        self.directory = directory

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        name: str = "edgefleet CA",
        days: int = 3650,
        passphrase: bytes | None = None,
    ) -> CertificateAuthority:
        """Create a new CA in ``directory`` (refused when one is there already: it would orphan every device)."""
        directory = Path(directory)
        if (directory / CA_KEY).exists() or (directory / CA_CERT).exists():
            raise ConfigError(
                f"{directory} already holds a CA",
                hint="use it as it is (devices pin it), or choose another folder",
            )
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        atomic_write(directory / CA_KEY, _key_pem(key, passphrase), mode=0o600)
        atomic_write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return cls(cert, key, directory)

    @classmethod
    def load(cls, directory: Path, *, passphrase: bytes | None = None) -> CertificateAuthority:
        directory = Path(directory)
        kp, cp = directory / CA_KEY, directory / CA_CERT
        if not kp.is_file() or not cp.is_file():
            raise ConfigError(f"no CA in {directory}", hint="create one with 'edgefleet certs init DIR'")
        return cls(
            _load_cert(cp.read_bytes(), str(cp)), _load_key(kp.read_bytes(), str(kp), passphrase), directory
        )

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, days: float
    ) -> x509.CertificateBuilder:
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )

    def issue_server(self, hosts: list[str], *, days: int = 397) -> IssuedCert:
        """A server certificate (new key) valid for ``hosts`` (DNS names and IP addresses, as SANs)."""
        if not hosts:
            raise InputError(
                "a server certificate needs at least one host", hint="--host 127.0.0.1 --host my.server"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]), key.public_key(), days
            )
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key, None))

    def sign_device_csr(self, csr_pem: bytes, device_id: str, *, days: float = 30) -> IssuedCert:
        """A client certificate for ``device_id`` from the device's CSR (its key never leaves the device).

        The subject is set by the CA (common name = device id), whatever the CSR asks for.
        """
        if len(csr_pem) > MAX_CSR_BYTES:
            raise InputError(f"CSR is {len(csr_pem)} bytes, more than {MAX_CSR_BYTES}", hint="send a PEM CSR")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise InputError(f"not a PEM certificate signing request: {e}", hint="send a PEM CSR") from e
        try:
            ok = csr.is_signature_valid
        except InvalidSignature:
            ok = False
        if not ok:
            raise InputError("the CSR's signature does not match its key", hint="make a new CSR")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise InputError("device keys must be EC (P-256)", hint="let the agent make its key")
        cert = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]), pub, days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM))
