"""Server side of an outbox upload: decode, authenticate the sender, validate every item.

The control plane's ingest endpoint calls :func:`parse_upload` with the body and the device id it
authenticated, then stores what is valid in one transaction keyed by ``batch_id`` and item ``uid`` (so a
retried upload is recognised and never counted twice: that part is the database's job).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from edgefleet.errors import EdgefleetError, ForbiddenError, ValidationError
from edgefleet.telemetry._upload import decode_upload
from edgefleet.telemetry._window import Window, WindowConfig

__all__ = ["ParsedUpload", "parse_upload"]


@dataclass
class ParsedUpload:
    """What an upload held, split by kind; ``rejected`` lists (uid, reason) of items that failed checks."""

    batch_id: str
    device_id: str
    windows: list[tuple[str, Window]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    samples: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    other: list[tuple[str, str, Any]] = field(default_factory=list)  # (uid, kind, payload)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    @property
    def uids(self) -> list[str]:
        return (
            [u for u, _ in self.windows]
            + [u for u, _ in self.events]
            + [u for u, _ in self.samples]
            + [u for u, _, _ in self.other]
        )


def parse_upload(
    body: bytes,
    *,
    device_id: str,
    tags: dict[str, str] | None = None,
    config: WindowConfig | None = None,
    now: float | None = None,
    max_body_bytes: int = 4 << 20,
    max_raw_bytes: int = 32 << 20,
    max_items: int = 10_000,
) -> ParsedUpload:
    """Decode an upload from ``device_id`` and validate each item.

    Args:
        body: the zstd body as sent by ``Outbox.drain``.
        device_id: the device the server authenticated; an upload claiming another is refused.
        tags: the server's own tags for this device (device_class, region, release...); they replace the
            tags a window carries, so a device cannot file its data under another group.
        config: window limits (sketch accuracy, sizes, clock tolerance).
        now: the server's wall clock.

    Raises:
        PayloadTooLargeError, ValidationError: the body as a whole is unusable (nothing to store).
        ForbiddenError: the body names another device.
    """
    cfg = config or WindowConfig()
    t = time.time() if now is None else now
    doc = decode_upload(body, max_body_bytes=max_body_bytes, max_raw_bytes=max_raw_bytes)
    claimed = doc.get("device_id")
    if claimed is not None and claimed != device_id:
        raise ForbiddenError(
            f"upload claims device {claimed!r} but was sent by {device_id!r}",
            hint="each device uploads only its own telemetry with its own token",
        )
    items = doc["items"]
    if len(items) > max_items:
        raise ValidationError(
            f"upload holds {len(items)} items, limit {max_items}", hint="send smaller batches"
        )
    out = ParsedUpload(batch_id=doc["batch_id"], device_id=device_id)
    seen: set[str] = set()
    server_tags = {"device_id": device_id, **(tags or {})}
    for it in items:
        uid, kind = it["uid"], it["kind"]
        if uid in seen or not 8 <= len(uid) <= 64:
            out.rejected.append((uid[:64], "duplicate or malformed uid"))
            continue
        seen.add(uid)
        payload = it.get("payload")
        try:
            if kind == "telemetry":
                w = Window.from_dict(payload, config=cfg, now=t)
                claimed_dev = w.tags.get("device_id")
                if claimed_dev is not None and claimed_dev != device_id:
                    raise ForbiddenError(f"window tagged with device {claimed_dev!r}")
                w.tags = dict(server_tags)
                out.windows.append((uid, w))
            elif kind in ("event", "sample"):
                if not isinstance(payload, dict):
                    raise ValidationError(f"{kind} payload must be a JSON object")
                (out.events if kind == "event" else out.samples).append((uid, payload))
            else:
                out.other.append((uid, kind, payload))
        except EdgefleetError as e:
            out.rejected.append((uid, e.message))
    return out
