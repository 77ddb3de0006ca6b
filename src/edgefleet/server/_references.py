"""Reference statistics of published bundles (``reference.json``), the yardstick of fleet drift.

Read from the server's TUF targets, checked against the registered length and sha256, and cached by sha256.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from edgefleet._fs import sha256_file
from edgefleet.errors import EdgefleetError
from edgefleet.protocol._targets import hashed_target_path
from edgefleet.telemetry import Reference

__all__ = ["BundleReferences", "VariantRef"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariantRef:
    """A variant of a release with its reference statistics, or why they cannot be read."""

    variant: str
    device_classes: tuple[str, ...]
    reference: Reference | None
    error: str | None


class BundleReferences:
    """``reference.json`` of published bundles, read from the server's TUF targets and cached by sha256."""

    def __init__(self, targets_dir: Path, *, size: int, max_bytes: int) -> None:
        self.targets_dir = Path(targets_dir)
        self.size, self.max_bytes = size, max_bytes
        self._cache: OrderedDict[str, tuple[Reference | None, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def _path(self, target_path: str, sha256: str) -> Path | None:
        base = self.targets_dir.resolve()
        for rel in (hashed_target_path(target_path, sha256), target_path):
            p = (base / rel).resolve()
            if p.is_relative_to(base) and p.is_file():
                return p
        return None

    def get(self, target_path: str, sha256: str, length: int) -> tuple[Reference | None, str | None]:
        with self._lock:
            hit = self._cache.get(sha256)
            if hit is not None:
                self._cache.move_to_end(sha256)
                return hit
        out = self._load(target_path, sha256, length)
        with self._lock:
            self._cache[sha256] = out
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return out

    def _load(self, target_path: str, sha256: str, length: int) -> tuple[Reference | None, str | None]:
        from edgefleet.bundle import Bundle

        p = self._path(target_path, sha256)
        if p is None:
            return None, f"bundle {target_path} is not in the server's repository ({self.targets_dir})"
        size = p.stat().st_size
        if size != length or size > self.max_bytes:
            return (
                None,
                f"bundle {target_path} has {size} bytes, registered {length} (limit {self.max_bytes})",
            )
        if sha256_file(p) != sha256:
            return None, f"bundle {target_path} does not match its registered sha256"
        try:
            with Bundle.open(p) as b:
                doc = b.reference
            if doc is None:
                return None, f"bundle {target_path} has no reference.json"
            return Reference.from_dict(doc), None
        except EdgefleetError as e:
            log.warning("cannot read the reference of %s: %s", target_path, e.message)
            return None, f"bundle {target_path}: {e.message}"
