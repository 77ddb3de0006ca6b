"""Deterministic tar archives and their safe extraction.

Writing: ustar format (no pax headers, so no timestamps sneak in), ``manifest.json`` first, the other
entries sorted, fixed mtime/uid/gid/uname/gname/mode. Same inputs -> byte-identical archive.

Reading: every member is checked (name, type, size, count, duplicates) before a byte is written; the
archive is extracted into a temporary sibling directory with ``tarfile``'s ``data`` filter as a second
line of defence, every file's sha256/size is checked against the manifest, and only then is the directory
renamed into place. A refused archive leaves nothing behind.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgefleet._fs import sha256_file
from edgefleet.bundle._config import BundleConfig, settings
from edgefleet.errors import BundleError, IntegrityError, ManifestError, UnsafeArchiveError
from edgefleet.protocol import Manifest

__all__ = [
    "MANIFEST_NAME",
    "read_manifest",
    "safe_extract",
    "write_archive",
    "write_npz",
    "check_member_name",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHUNK = 1 << 20


def check_member_name(name: str) -> str | None:
    """Return why ``name`` is not a safe relative bundle path, or None when it is."""
    if not name or "\\" in name or "\x00" in name:
        return "empty name or backslash/NUL in name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    parts = name.split("/")  # not PurePosixPath(name).parts: that silently drops "." and empty components
    if any(p in ("..", ".") for p in parts) or name.endswith("/"):
        return "'..' or '.' component"
    if not all(_SAFE_NAME.match(p) for p in parts):
        return "characters outside [A-Za-z0-9._-] in a path component"
    if len(parts) > 8 or len(name) > 200:
        return "path too deep or too long"
    return None


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` that ``np.load`` reads, deterministically (numpy's savez stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in sorted(arrays):
            arr = np.asarray(arrays[key])
            if arr.dtype == object:
                raise BundleError(f"array {key!r} has dtype object", hint="store numbers or bytes only")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, buf.getvalue())


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = mtime
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def write_archive(out: Path, manifest_bytes: bytes, files: dict[str, Path], *, mtime: int) -> None:
    """Write the deterministic bundle tar atomically (temp file + fsync + rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            tar.addfile(_tarinfo(MANIFEST_NAME, len(manifest_bytes), mtime), io.BytesIO(manifest_bytes))
            for name in sorted(files):
                src = files[name]
                size = src.stat().st_size
                with open(src, "rb") as f:
                    tar.addfile(_tarinfo(name, size, mtime), f)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_tar(archive: Path) -> tarfile.TarFile:
    archive = Path(archive)
    if not archive.is_file():
        raise BundleError(f"bundle archive {archive} does not exist or is not a file", hint="check the path")
    try:
        return tarfile.open(archive, mode="r:")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise IntegrityError(
            f"{archive} is not a readable bundle archive (truncated or corrupted?): {e}",
            hint="download or rebuild the bundle",
            path=str(archive),
        ) from e


def read_manifest(archive: Path, *, config: BundleConfig | None = None) -> Manifest:
    """Read and validate ``manifest.json`` only (cheap: the rest of the archive is not read).

    Raises:
        IntegrityError: the archive is not a readable tar.
        ManifestError: no manifest, an oversized or invalid one.
        SchemaVersionError: the manifest comes from a newer schema.
    """
    cfg = config or settings()
    try:
        with _open_tar(archive) as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST_NAME:
                raise ManifestError(
                    f"{archive}: the first archive entry is {member.name if member else 'missing'!r}, "
                    f"not {MANIFEST_NAME}",
                    hint="this is not an edgefleet bundle (bundles always start with manifest.json)",
                )
            if not member.isreg():
                raise UnsafeArchiveError(f"{archive}: {MANIFEST_NAME} is not a regular file", hint="rebuild")
            if member.size > cfg.max_manifest_bytes:
                raise ManifestError(
                    f"{archive}: manifest.json is {member.size} bytes, more than the "
                    f"{cfg.max_manifest_bytes} allowed",
                    hint="a manifest holds metadata only (EDGEFLEET_BUNDLE_MAX_MANIFEST_BYTES raises the cap)",
                )
            f = tar.extractfile(member)
            assert f is not None
            data = f.read(member.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise IntegrityError(
            f"{archive} is truncated or corrupted: {e}", hint="download or rebuild the bundle"
        ) from e
    if len(data) != member.size:
        raise IntegrityError(f"{archive}: manifest.json is truncated", hint="download or rebuild the bundle")
    return Manifest.from_json(data)


def _check_members(
    archive: Path, members: Iterable[tarfile.TarInfo], cfg: BundleConfig
) -> list[tarfile.TarInfo]:
    seen: set[str] = set()
    checked: list[tarfile.TarInfo] = []
    total = 0
    for m in members:
        if len(checked) >= cfg.max_entries:
            raise UnsafeArchiveError(
                f"{archive} has more than {cfg.max_entries} entries",
                hint="bundles hold a handful of files (EDGEFLEET_BUNDLE_MAX_ENTRIES raises the cap)",
            )
        why = check_member_name(m.name)
        if why:
            raise UnsafeArchiveError(
                f"{archive}: refused entry {m.name!r}: {why}",
                hint="the archive may be malicious; do not use it",
                entry=m.name,
            )
        if m.issym() or m.islnk():
            raise UnsafeArchiveError(
                f"{archive}: refused entry {m.name!r}: {'symlink' if m.issym() else 'hardlink'} to {m.linkname!r}",
                hint="bundles contain regular files only; the archive may be malicious",
                entry=m.name,
            )
        if m.issparse():
            # a GNU/PAX sparse member expands holes on extraction: 80 KB of tar became a 2 GiB file that
            # was hashed before its size was refused. write_archive never makes one.
            raise UnsafeArchiveError(
                f"{archive}: refused entry {m.name!r}: a sparse file (it would expand on extraction)",
                hint="bundles contain plain regular files only; the archive may be malicious",
                entry=m.name,
            )
        if not m.isreg():
            raise UnsafeArchiveError(
                f"{archive}: refused entry {m.name!r}: not a regular file (type {m.type!r})",
                hint="bundles contain regular files only",
                entry=m.name,
            )
        if m.name in seen:
            raise UnsafeArchiveError(
                f"{archive}: duplicate entry {m.name!r}",
                hint="the archive may be tampered; rebuild it",
                entry=m.name,
            )
        if m.size > cfg.max_entry_bytes:
            raise UnsafeArchiveError(
                f"{archive}: entry {m.name!r} is {m.size} bytes, more than {cfg.max_entry_bytes}",
                hint="EDGEFLEET_BUNDLE_MAX_ENTRY_BYTES raises the cap",
                entry=m.name,
            )
        total += m.size
        if total > cfg.max_total_bytes:
            raise UnsafeArchiveError(
                f"{archive}: entries add up to more than {cfg.max_total_bytes} bytes",
                hint="EDGEFLEET_BUNDLE_MAX_TOTAL_BYTES raises the cap",
            )
        seen.add(m.name)
        checked.append(m)
    return checked


def verify_files(root: Path, manifest: Manifest, *, exact: bool = True) -> int:
    """Check every file listed in the manifest against its sha256 and size; return how many were checked.

    With ``exact``, files present under ``root`` but not listed are refused too.
    """
    for name, entry in sorted(manifest.files.items()):
        why = check_member_name(name)
        if why or name == MANIFEST_NAME:
            raise ManifestError(
                f"manifest lists an unsafe file name {name!r}: {why}", hint="rebuild the bundle"
            )
        p = root / name
        if not p.is_file() or p.is_symlink():
            raise IntegrityError(
                f"bundle file {name} listed in the manifest is missing", hint="download or rebuild the bundle"
            )
        size = p.stat().st_size
        if size != entry.size:
            raise IntegrityError(
                f"bundle file {name} is {size} bytes, the manifest says {entry.size}",
                hint="the bundle is corrupted or tampered; download or rebuild it",
                file=name,
            )
        digest = sha256_file(p)
        if digest != entry.sha256:
            raise IntegrityError(
                f"bundle file {name} has sha256 {digest[:16]}..., the manifest says {entry.sha256[:16]}...",
                hint="the bundle is corrupted or tampered; download or rebuild it",
                file=name,
            )
    if exact:
        present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
        extra = sorted(present - set(manifest.files) - {MANIFEST_NAME})
        if extra:
            raise IntegrityError(
                f"bundle holds files the manifest does not list: {', '.join(extra[:5])}",
                hint="the bundle is tampered; download or rebuild it",
            )
    return len(manifest.files)


def safe_extract(
    archive: Path, dest: Path | None = None, *, config: BundleConfig | None = None
) -> tuple[Path, Manifest]:
    """Extract a bundle archive safely and check every file against its manifest.

    Args:
        archive: the bundle tar.
        dest: directory to create (must not exist, or be empty); default: a new temporary directory.

    Returns:
        The extracted directory and the validated manifest.

    Raises:
        UnsafeArchiveError, IntegrityError, ManifestError, SchemaVersionError. On any error nothing is
        left at ``dest`` (or in the temporary location).
    """
    cfg = config or settings()
    archive = Path(archive)
    manifest = read_manifest(archive, config=cfg)
    if dest is not None:
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise BundleError(
                f"cannot extract into {dest}: it exists and is not an empty directory",
                hint="choose a new directory or remove the old one",
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    else:
        work = Path(tempfile.mkdtemp(prefix="edgefleet-bundle-"))
    try:
        with _open_tar(archive) as tar:
            try:
                members = _check_members(archive, tar, cfg)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise IntegrityError(
                    f"{archive} is truncated or corrupted: {e}", hint="download or rebuild the bundle"
                ) from e
            names = {m.name for m in members}
            listed = set(manifest.files) | {MANIFEST_NAME}
            if names != listed:
                missing, extra = sorted(listed - names), sorted(names - listed)
                raise IntegrityError(
                    f"{archive}: archive entries do not match the manifest "
                    f"(missing: {missing or 'none'}, unlisted: {extra or 'none'})",
                    hint="the bundle is corrupted or tampered; download or rebuild it",
                )
            try:
                tar.extractall(work, members=members, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise IntegrityError(
                    f"{archive} is truncated or corrupted: {e}", hint="download or rebuild the bundle"
                ) from e
        # The manifest we validated is the one we keep (re-read from disk to be sure they are the same bytes).
        if Manifest.from_json((work / MANIFEST_NAME).read_bytes()) != manifest:
            raise IntegrityError(f"{archive}: manifest changed during extraction", hint="retry")
        verify_files(work, manifest)
        if dest is None:
            return work, manifest
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(work, dest)
        return dest, manifest
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
