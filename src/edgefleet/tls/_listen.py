"""TLS for listeners and clients: who must use it, and the ssl contexts that use it."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from edgefleet.errors import ConfigError

__all__ = ["check_listen", "client_context", "is_loopback", "server_context"]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, *, tls: bool, insecure_http: bool, what: str = "the server") -> None:
    """Refuse to listen off loopback in clear text unless the operator said so.

    Raises:
        ConfigError: ``host`` is not a loopback address, no TLS certificate is given and ``insecure_http``
            is not set.
    """
    if tls or insecure_http or is_loopback(host):
        return
    raise ConfigError(
        f"{what} would listen on {host} without TLS: tokens and model bytes would cross the network in clear",
        hint="give --tls-cert and --tls-key ('edgefleet certs init' makes them), bind 127.0.0.1, or pass "
        "--insecure-http if a TLS-terminating proxy sits in front",
    )


def _check_pair(cert: Path | str | None, key: Path | str | None) -> None:
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert and --tls-key go together", hint="give both, or neither")
    for p in (cert, key):
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"{p} does not exist or is not a file", hint="check the path")


def server_context(
    cert: Path | str, key: Path | str, *, client_ca: Path | str | None = None, require_client: bool = False
) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with ``client_ca`` it asks for (or with ``require_client`` demands) a client certificate."""
    _check_pair(cert, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            ctx.load_verify_locations(cafile=str(client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    except ssl.SSLError as e:
        raise ConfigError(
            f"cannot load the TLS certificate or key: {e}", hint="check --tls-cert/--tls-key"
        ) from e
    return ctx


def client_context(
    ca: Path | str | None, *, cert: Path | str | None = None, key: Path | str | None = None
) -> ssl.SSLContext:
    """A client context that trusts ``ca`` only (pinning the control plane's CA), never the system store.

    With ``ca=None`` the system store is used (for a server behind a public certificate, by explicit choice).
    ``cert``/``key`` present a client certificate (mutual TLS).
    """
    if ca is not None and not Path(ca).is_file():
        raise ConfigError(f"CA file {ca} does not exist", hint="give the control plane's ca.crt")
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if ca is not None:  # with a cafile, create_default_context loads that file and not the system store
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None or key is not None:
        _check_pair(cert, key)
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except ssl.SSLError as e:
            raise ConfigError(f"cannot load the client certificate: {e}", hint="re-enroll the device") from e
    return ctx
