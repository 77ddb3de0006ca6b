"""Content-addressed blob storage (the server's one seam for bytes that do not belong in the database)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable
from urllib.parse import urlsplit

from edgefleet.errors import ConfigError, EdgefleetError, IntegrityError, NotFoundError, PayloadTooLargeError

if TYPE_CHECKING:
    from edgefleet.server._config import ServerConfig

__all__ = ["BlobStore", "FileBlobStore", "S3BlobStore", "make_blob_store"]

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


class BlobStoreUnavailableError(EdgefleetError):
    """The blob store (an S3-compatible service) did not answer or refused the request."""

    code = "blob_store_unavailable"
    status_code = 503


class S3BlobStore:
    """Blobs as objects ``<prefix>/ab/cdef...`` in a bucket of an S3-compatible service (boto3).

    Content-addressed like :class:`FileBlobStore`: the key is the sha256 of the bytes, putting the same
    bytes twice uploads them once, and every read is checked against its key. Reads are bounded
    (``max_blob_bytes``): an object larger than that is refused before its body is read. Credentials come
    from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_blob_bytes: int = 64 * 1024 * 1024,
        client: Any = None,
        check: bool = True,
    ) -> None:
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise ConfigError(
                    "an s3:// blob store needs boto3, which is not installed",
                    hint="pip install 'edgefleet[s3]'",
                ) from None
            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=Config(
                    connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
                ),
            )
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.max_blob_bytes = max_blob_bytes
        self.endpoint_url = endpoint_url
        if check:
            self.check()

    def _key(self, sha256: str) -> str:
        if not _SHA.match(sha256):
            raise NotFoundError(f"{sha256!r} is not a sha256 hex digest", hint="use 64 lowercase hex digits")
        rel = f"{sha256[:2]}/{sha256[2:]}"
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _unavailable(self, exc: Exception, what: str) -> BlobStoreUnavailableError:
        return BlobStoreUnavailableError(
            f"the blob store {self._where()} failed to {what}: {exc}",
            hint="check the S3 endpoint, bucket and credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
        )

    @staticmethod
    def _status(exc: Exception) -> int | None:
        resp = getattr(exc, "response", None)
        if not isinstance(resp, dict):
            return None
        code = resp.get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NotFound"):
            return 404
        return resp.get("ResponseMetadata", {}).get("HTTPStatusCode")

    def check(self) -> None:
        """Fail fast with a clear error when the bucket cannot be reached (at server start)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - botocore raises many kinds; all mean "unusable"
            raise ConfigError(
                f"the blob store {self._where()} is not usable: {exc}",
                hint="create the bucket, check EDGEFLEET_SERVER_BLOB_S3_ENDPOINT_URL and the AWS_* credentials",
            ) from None

    def _head(self, sha256: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:  # noqa: BLE001
            if self._status(exc) == 404:
                return None
            raise self._unavailable(exc, "look up a blob") from None

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self._head(digest) is not None:
            return digest
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(digest), Body=data)
        except Exception as exc:  # noqa: BLE001
            raise self._unavailable(exc, "store a blob") from None
        return digest

    def put_stream(self, stream: BinaryIO, *, expected_sha256: str | None = None) -> str:
        h = hashlib.sha256()
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
                spool.write(chunk)
            digest = h.hexdigest()
            if expected_sha256 is not None and digest != expected_sha256:
                raise IntegrityError(
                    f"blob hashes to {digest}, not the expected {expected_sha256}",
                    hint="the upload was corrupted or truncated; send it again",
                )
            if self._head(digest) is not None:
                return digest
            spool.seek(0)
            try:
                self.client.upload_fileobj(spool, self.bucket, self._key(digest))
            except Exception as exc:  # noqa: BLE001
                raise self._unavailable(exc, "store a blob") from None
        return digest

    def get(self, sha256: str) -> bytes:
        key = self._key(sha256)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if self._status(exc) == 404:
                raise NotFoundError(f"no blob {sha256}", hint="it was never stored or was deleted") from None
            raise self._unavailable(exc, "read a blob") from None
        body = obj["Body"]
        try:
            size = int(obj.get("ContentLength") or 0)
            if size > self.max_blob_bytes:
                raise PayloadTooLargeError(
                    f"blob {sha256} is {size} bytes, over the store's read limit of {self.max_blob_bytes}",
                    hint="raise EDGEFLEET_SERVER_BLOB_MAX_BYTES if the object is legitimate",
                )
            data = body.read(self.max_blob_bytes + 1)
        finally:
            body.close()
        if len(data) > self.max_blob_bytes:
            raise PayloadTooLargeError(
                f"blob {sha256} is over the store's read limit of {self.max_blob_bytes} bytes",
                hint="raise EDGEFLEET_SERVER_BLOB_MAX_BYTES if the object is legitimate",
            )
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(
                f"blob {sha256} is corrupted in {self._where()}", hint="restore it from a backup"
            )
        return data

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def path(self, sha256: str) -> Path | None:
        return None  # no local file: HTTP serves the bytes from get()

    def delete(self, sha256: str) -> bool:
        if self._head(sha256) is None:
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:  # noqa: BLE001
            raise self._unavailable(exc, "delete a blob") from None
        return True


def make_blob_store(cfg: ServerConfig) -> BlobStore:
    """The blob store a server configuration names: ``blob_url`` s3://bucket/prefix, else files in blob_path."""
    url = cfg.blob_url
    if not url:
        return FileBlobStore(cfg.blob_path)
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileBlobStore(Path(parts.path))
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(
            f"blob_url {url!r} is neither s3://bucket[/prefix] nor file:///path",
            hint="e.g. EDGEFLEET_SERVER_BLOB_URL=s3://edgefleet/blobs (or leave it unset for data_dir/blobs)",
        )
    return S3BlobStore(
        parts.netloc,
        parts.path,
        endpoint_url=cfg.blob_s3_endpoint_url,
        region=cfg.blob_s3_region,
        max_blob_bytes=cfg.blob_max_bytes,
    )
