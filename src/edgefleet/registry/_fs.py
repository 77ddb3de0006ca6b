"""The repository lock and moving finished files into place (primitives live in ``edgefleet._fs``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from edgefleet._fs import fsync_dir
from edgefleet.errors import RegistryError


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
