"""Crash-safe file writes and the repository lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from edgefleet.errors import RegistryError

_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Persist a directory entry change (a rename or a new file) across a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed the mode given to open()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


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


def file_sha256(path: Path) -> tuple[int, str]:
    """Length and sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def install(tmp: Path, final: Path) -> None:
    """Move a finished, fsynced temporary file into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def clear_dir(path: Path) -> None:
    """Remove leftovers of an interrupted run (called while holding the lock)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, *, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; the kernel releases it if the process dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise RegistryError(
                        f"the repository is locked by another writer ({lock_path}) for more than {timeout:g}s",
                        hint="wait for the other publish/rotation to finish, or raise "
                        "EDGEFLEET_REGISTRY_LOCK_TIMEOUT",
                        lock=str(lock_path),
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
