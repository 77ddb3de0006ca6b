"""Filesystem primitives every package uses: crash-safe writes and streamed hashes.

This is ground floor, like ``errors.py`` and ``protocol/``: it imports nothing from edgefleet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "copy_hashed", "file_sha256", "fsync_dir", "sha256_file"]

_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Persist a directory entry change (a rename or a new file) across a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half of it.

    The temporary file is created beside the target with ``O_EXCL`` and a random suffix (two writers never
    share it), fsynced, given ``mode`` (the umask may have narrowed it), renamed over ``path``, and the
    directory entry is fsynced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def file_sha256(path: Path) -> tuple[int, str]:
    """Length and hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    return file_sha256(path)[1]


def copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    """Copy ``src`` to a new file ``dst`` (fsynced), returning its length and sha256."""
    h = hashlib.sha256()
    n = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            n += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return n, h.hexdigest()
