"""The upload side of the outbox: items on the wire, upload bodies (zstd-compressed JSON), the bandwidth budget.

An upload body is ``zstd(JSON {format, batch_id, header..., items: [{uid, kind, created, payload |
payload_b64}]})``; ``encode_upload`` builds it on the device, ``decode_upload`` checks it on the server
without trusting its size claims. ``TokenBucket`` paces ``Outbox.drain``, which reports a ``DrainReport``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgefleet.errors import PayloadTooLargeError, ValidationError

if TYPE_CHECKING:
    from edgefleet.telemetry._outbox import Outbox

__all__ = [
    "UPLOAD_FORMAT",
    "DrainReport",
    "OutboxItem",
    "TokenBucket",
    "UploadBatch",
    "decode_upload",
    "drain",
    "encode_upload",
]

log = logging.getLogger(__name__)

_MIB = 1 << 20
UPLOAD_FORMAT = "edgefleet-outbox/1"


@dataclass(frozen=True)
class OutboxItem:
    """One queued item as handed to an uploader."""

    id: int
    uid: str
    kind: str
    priority: int
    created_wall: float
    size: int
    payload: bytes | dict[str, Any]

    def wire(self) -> dict[str, Any]:
        """JSON-able form used in upload bodies (bytes travel as base64)."""
        d: dict[str, Any] = {"uid": self.uid, "kind": self.kind, "created": self.created_wall}
        if isinstance(self.payload, bytes):
            d["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        else:
            d["payload"] = self.payload
        return d


@dataclass(frozen=True)
class UploadBatch:
    """A compressed upload body and the ids to :meth:`Outbox.ack` once the server accepted it.

    ``batch_id`` is derived from the item uids, so a retry of the same items has the same id and the
    server can deduplicate it.
    """

    batch_id: str
    ids: list[int]
    items: list[OutboxItem]
    body: bytes
    raw_bytes: int

    @property
    def compressed_bytes(self) -> int:
        return len(self.body)


@dataclass
class DrainReport:
    """What one :meth:`Outbox.drain` call did."""

    batches: int = 0
    items: int = 0
    raw_bytes: int = 0
    compressed_bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    stopped: str = "empty"  # empty | bandwidth | error | max_batches
    wait_s: float = 0.0
    error: str | None = None


class TokenBucket:
    """Bandwidth budget: ``rate`` bytes per second, up to ``burst`` saved up.

    A full bucket always lets one request through (going into debt), so a body larger than the burst is
    delayed, never starved.
    """

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValidationError("token bucket rate and burst must be positive", rate=rate, burst=burst)
        self.rate, self.burst, self._clock = float(rate), float(burst), clock
        self._tokens, self._t = float(burst), clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._t) * self.rate)
        self._t = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_consume(self, n: int) -> float:
        """Take ``n`` tokens; return 0.0 on success, else the seconds to wait before trying again."""
        self._refill()
        # a hundredth of a byte of slack: waiting exactly need/rate must succeed despite float rounding
        if self._tokens + 0.01 >= min(n, self.burst):
            self._tokens -= n
            return 0.0
        need = min(n, self.burst) - self._tokens
        return need / self.rate + 1e-6


def _zstd() -> Any:
    """The standard library's ``compression.zstd`` (Python 3.14+) or its backport, as bundle deltas use."""
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd  # type: ignore[no-redef]
    return zstd


def encode_upload(
    items: list[OutboxItem], *, batch_id: str, level: int = 3, header: dict | None = None
) -> tuple[bytes, int]:
    """Build a zstd-compressed JSON upload body; returns (body, raw JSON size)."""
    zstd = _zstd()

    doc = {
        "format": UPLOAD_FORMAT,
        "batch_id": batch_id,
        **(header or {}),
        "items": [i.wire() for i in items],
    }
    raw = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return zstd.compress(raw, level=level), len(raw)


def decode_upload(
    body: bytes, *, max_body_bytes: int = 4 * _MIB, max_raw_bytes: int = 32 * _MIB
) -> dict[str, Any]:
    """Server side: decompress and check an upload body without trusting its size claims.

    Raises:
        PayloadTooLargeError: the body, or what it decompresses to, exceeds the limits.
        ValidationError: not zstd, not JSON, or not an edgefleet outbox upload.
    """
    zstd = _zstd()

    if len(body) > max_body_bytes:
        raise PayloadTooLargeError(
            f"upload body is {len(body)} bytes, limit {max_body_bytes}",
            hint="send smaller batches (OutboxConfig.upload_max_bytes)",
        )
    try:
        # one frame, and never more than max_raw_bytes + 1 bytes of output: a zstd bomb stops here
        raw = zstd.ZstdDecompressor().decompress(body, max_length=max_raw_bytes + 1)
    except zstd.ZstdError as e:
        raise ValidationError(
            f"upload body is not valid zstd: {e}", hint="compress the JSON body with zstd"
        ) from e
    if len(raw) > max_raw_bytes:
        raise PayloadTooLargeError(
            f"upload body decompresses to more than {max_raw_bytes} bytes",
            hint="send smaller batches (OutboxConfig.upload_max_bytes)",
        )
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValidationError(f"upload body is not JSON: {e}", hint="the body must be zstd(JSON)") from e
    if not isinstance(doc, dict) or doc.get("format") != UPLOAD_FORMAT:
        raise ValidationError(
            f"upload body format is {doc.get('format') if isinstance(doc, dict) else type(doc).__name__!r}, "
            f"expected {UPLOAD_FORMAT!r}",
            hint="upgrade the device or the server so they speak the same upload format",
        )
    if not isinstance(doc.get("batch_id"), str) or not isinstance(doc.get("items"), list):
        raise ValidationError("upload body needs a string 'batch_id' and a list 'items'")
    for i, it in enumerate(doc["items"]):
        if (
            not isinstance(it, dict)
            or not isinstance(it.get("uid"), str)
            or not isinstance(it.get("kind"), str)
        ):
            raise ValidationError(f"upload item {i} needs string 'uid' and 'kind'")
        if "payload_b64" in it:
            try:
                it["payload"] = base64.b64decode(it.pop("payload_b64"), validate=True)
            except (ValueError, TypeError) as e:
                raise ValidationError(f"upload item {i} has invalid base64 payload") from e
    return doc


def drain(
    outbox: Outbox,
    send: Callable[[UploadBatch], Any],
    *,
    kinds: Iterable[str] | None = None,
    header: dict | None = None,
    max_batches: int | None = None,
) -> DrainReport:
    """Upload batches through ``send`` until empty, out of bandwidth budget, or ``send`` raises.

    ``send`` must return only once the server has durably accepted the body; its exception stops the
    drain and leaves the batch queued (the server deduplicates a retry by ``batch_id``).
    """
    rep = DrainReport()
    kinds = list(kinds) if kinds is not None else None
    while max_batches is None or rep.batches < max_batches:
        up = outbox.next_upload(kinds=kinds, header=header)
        if up is None:
            rep.stopped = "empty"
            return rep
        if outbox._bucket is not None:
            wait = outbox._bucket.try_consume(up.compressed_bytes)
            if wait > 0:
                rep.stopped, rep.wait_s = "bandwidth", wait
                return rep
        try:
            send(up)
        except Exception as e:  # noqa: BLE001 - any transport failure leaves the batch queued
            rep.stopped, rep.error = "error", f"{type(e).__name__}: {e}"
            log.warning("outbox upload failed: %s", rep.error, extra={"batch_id": up.batch_id})
            return rep
        outbox.ack(up.ids)
        rep.batches += 1
        rep.items += len(up.ids)
        rep.raw_bytes += up.raw_bytes
        rep.compressed_bytes += up.compressed_bytes
        for it in up.items:
            rep.by_kind[it.kind] = rep.by_kind.get(it.kind, 0) + 1
    rep.stopped = "max_batches"
    return rep
