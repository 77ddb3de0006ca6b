"""Transport security: a small private CA, device certificates from CSRs, TLS contexts and listener policy.

``edgefleet certs init`` makes a CA and a server certificate; ``edgefleet server run``, ``edgefleet serve`` and
the agent's local API take ``--tls-cert/--tls-key`` and refuse a non-loopback bind in clear text unless told
``--insecure-http``.
"""

from edgefleet.tls._ca import (
    CA_CERT,
    CA_KEY,
    CertificateAuthority,
    IssuedCert,
    cert_common_name,
    cert_expires,
    new_key_and_csr,
)
from edgefleet.tls._listen import check_listen, client_context, is_loopback, server_context
from edgefleet.tls._peer import peer_cert_der, peer_cert_protocol

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CertificateAuthority",
    "IssuedCert",
    "cert_common_name",
    "cert_expires",
    "check_listen",
    "client_context",
    "is_loopback",
    "new_key_and_csr",
    "peer_cert_der",
    "peer_cert_protocol",
    "server_context",
]
