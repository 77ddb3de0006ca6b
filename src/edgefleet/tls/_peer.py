"""The client certificate of a TLS connection, handed to the ASGI app (uvicorn does not expose it).

uvicorn's HTTP protocols keep the app in ``self.app``; the subclass below wraps it, per connection, so that
every request's scope carries ``scope["extensions"]["tls"]["client_cert_der"]`` (the DER bytes of the peer's
verified certificate, or None), in the shape of the ASGI TLS extension.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["peer_cert_der", "peer_cert_protocol"]


def _wrap(app: Any, der: bytes | None) -> Any:
    async def with_peer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            ext = dict(scope.get("extensions") or {})
            ext["tls"] = {"client_cert_der": der}
            scope = {**scope, "extensions": ext}
        await app(scope, receive, send)

    return with_peer


def peer_cert_protocol(base: str = "h11") -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class (``h11`` or ``httptools``) that exposes the peer certificate."""
    if base == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class PeerCertProtocol(Base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            self.app = _wrap(self.app, der)

    return PeerCertProtocol


def peer_cert_der(scope: dict[str, Any]) -> bytes | None:
    """The verified client certificate (DER) of the request's connection, if it presented one."""
    return ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_der")
