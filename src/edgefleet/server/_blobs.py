"""Content-addressed blob storage (the server's one seam for bytes that do not belong in the database)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from edgefleet.errors import IntegrityError, NotFoundError

__all__ = ["BlobStore", "FileBlobStore"]

_SHA = re.compile(r"^[0-9a-f]{64}$")


@runtime_checkable
class BlobStore(Protocol):
    """Stores bytes under their sha256; putting the same bytes twice stores them once."""

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its sha256 (hex)."""
        ...

    def put_stream(self, stream: BinaryIO, *, expected_sha256: str | None = None) -> str:
        """Store a stream without holding it in memory; checks ``expected_sha256`` when given."""
        ...

    def get(self, sha256: str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...

    def path(self, sha256: str) -> Path | None:
        """A local file path of the blob when the store has one (lets HTTP serve it with Range)."""
        ...

    def delete(self, sha256: str) -> bool: ...


class FileBlobStore:
    """Blobs as files ``<root>/ab/cdef...``, written to a temp file, fsynced and renamed into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, sha256: str) -> Path:
        if not _SHA.match(sha256):
            raise NotFoundError(f"{sha256!r} is not a sha256 hex digest", hint="use 64 lowercase hex digits")
        return self.root / sha256[:2] / sha256[2:]

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        dest = self._file(digest)
        if dest.exists():
            return digest
        self._write(dest, [data])
        return digest

    def put_stream(self, stream: BinaryIO, *, expected_sha256: str | None = None) -> str:
        h = hashlib.sha256()
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = h.hexdigest()
            if expected_sha256 is not None and digest != expected_sha256:
                raise IntegrityError(
                    f"blob hashes to {digest}, not the expected {expected_sha256}",
                    hint="the upload was corrupted or truncated; send it again",
                )
            dest = self._file(digest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            return digest
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _write(self, dest: Path, chunks: list[bytes]) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                for c in chunks:
                    f.write(c)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get(self, sha256: str) -> bytes:
        f = self._file(sha256)
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no blob {sha256}", hint="it was never stored or was deleted") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"blob {sha256} is corrupted on disk", hint="restore it from a backup")
        return data

    def exists(self, sha256: str) -> bool:
        return self._file(sha256).exists()

    def path(self, sha256: str) -> Path | None:
        f = self._file(sha256)
        return f if f.exists() else None

    def delete(self, sha256: str) -> bool:
        f = self._file(sha256)
        try:
            f.unlink()
            return True
        except FileNotFoundError:
            return False
