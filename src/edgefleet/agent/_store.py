"""Verified model versions on disk and the atomic ``current`` symlink.

Layout under the state directory::

    models/<sha256>/archive.tar   the verified bundle archive (kept for deltas and re-checks)
    models/<sha256>/bundle/       the unpacked bundle (every file checked against its manifest on install)
    models/<sha256>/meta.json     written last: its presence marks the version as verified
    current -> models/<sha256>    swapped with one rename, never missing

With a model key (``AgentConfig.model_key_file``) the model file is encrypted at rest: after the files are
checked against the manifest (plaintext), the model becomes ``models/<sha256>/<model file>.enc`` (AES-GCM,
``_atrest``), its plaintext and the archive are deleted (no deltas from a sealed version: they need the
archive), and every load decrypts it in memory, authenticates it and checks its hash again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet._fs import atomic_write, fsync_dir, sha256_file
from edgefleet.agent._atrest import SEALED_SUFFIX, ModelKey
from edgefleet.errors import ConfigError, DiskSpaceError, IntegrityError, NotFoundError

if TYPE_CHECKING:
    from edgefleet.bundle import Bundle

__all__ = ["ModelStore", "StoredModel"]

log = logging.getLogger(__name__)

_HEX = set("0123456789abcdef")


def _is_sha(s: str) -> bool:
    return len(s) == 64 and set(s) <= _HEX


@dataclass
class StoredModel:
    """One verified version in the store."""

    sha256: str
    path: Path
    name: str
    version: str
    variant: str
    target_path: str
    length: int
    installed_at: float
    activated_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sealed: str | None = None  # the encrypted model file (under ``path``), when encrypted at rest

    @property
    def bundle_dir(self) -> Path:
        return self.path / "bundle"

    @property
    def archive(self) -> Path:
        return self.path / "archive.tar"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "name": self.name,
            "version": self.version,
            "variant": self.variant,
            "target_path": self.target_path,
            "length": self.length,
            "installed_at": self.installed_at,
            "activated_at": self.activated_at,
            **({"extra": self.extra} if self.extra else {}),
            **({"sealed": self.sealed} if self.sealed else {}),
        }


class ModelStore:
    """Install verified bundles under ``models/<sha256>/`` and point ``current`` at one of them.

    Args:
        key: seal each installed model file with this key (encryption at rest); None: plain files.
    """

    def __init__(self, state_dir: Path, *, key: ModelKey | None = None) -> None:
        self.root = Path(state_dir)
        self.models = self.root / "models"
        self.current_link = self.root / "current"
        self.models.mkdir(parents=True, exist_ok=True)
        self.key = key
        if key is not None and self.models.resolve() in key.path.resolve().parents:
            raise ConfigError(
                f"the model key {key.path} is inside the model store {self.models}",
                hint="keep model_key_file outside the state directory's models/ (e.g. /etc/edgefleet/model.key)",
            )

    # --- reading ---------------------------------------------------------------------------------

    def get(self, sha256: str) -> StoredModel | None:
        """The verified version with this archive sha256, or None (missing or never finished)."""
        if not _is_sha(sha256):
            return None
        d = self.models / sha256
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if not (d / "bundle").is_dir():
            return None
        return StoredModel(
            sha256=sha256,
            path=d,
            name=meta["name"],
            version=meta["version"],
            variant=meta["variant"],
            target_path=meta.get("target_path", ""),
            length=int(meta.get("length", 0)),
            installed_at=float(meta.get("installed_at", 0.0)),
            activated_at=meta.get("activated_at"),
            extra=meta.get("extra") or {},
            sealed=meta.get("sealed"),
        )

    def list(self) -> list[StoredModel]:
        """Verified versions, most recently activated (or installed) first."""
        out = [m for d in self.models.iterdir() if (m := self.get(d.name)) is not None]
        out.sort(key=lambda m: (m.activated_at or 0.0, m.installed_at), reverse=True)
        return out

    def current(self) -> StoredModel | None:
        """The version ``current`` points at, if it is a verified version."""
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        return self.get(Path(target).name)

    def find_version(self, version: str, name: str | None = None) -> StoredModel | None:
        for m in self.list():
            if m.version == version and (name is None or m.name == name):
                return m
        return None

    # --- verification ----------------------------------------------------------------------------

    def open(self, sha256: str) -> Bundle:
        """The stored version as a ``Bundle``, every file re-checked against its manifest (bundle library).

        Use it for a version installed by an earlier run (start, rollback): the disk may have changed since.

        Raises:
            NotFoundError: no verified version with this sha256.
            IntegrityError, BundleError: a file changed on disk.
        """
        from edgefleet.bundle import Bundle

        m = self._stored(sha256)
        b = Bundle.from_dir(m.bundle_dir, check=True, model_bytes=self._unsealer(m))
        if m.sealed:
            b.model_source  # noqa: B018 - decrypt, authenticate and hash the model once now
        return b

    def _unsealer(self, m: StoredModel) -> Any:
        """How the bundle reads its model when it is sealed: decrypted in memory on each load."""
        if not m.sealed:
            return None
        key = self.key
        src = m.path / m.sealed
        if key is None:
            raise IntegrityError(
                f"the model of {m.version} is encrypted at rest and no model key is configured",
                hint="set model_key_file (EDGEFLEET_AGENT_MODEL_KEY_FILE) to the key it was sealed with",
            )
        context = f"{m.sha256}/{m.sealed}"
        return lambda: key.open(src, context=context)

    def verify(self, sha256: str, *, deep: bool = True) -> StoredModel:
        """Re-check a stored version: archive hash and every unpacked file against its manifest.

        Raises:
            NotFoundError: no verified version with this sha256.
            IntegrityError: a file changed on disk.
        """
        m = self._stored(sha256)
        if deep:
            if m.archive.exists() and sha256_file(m.archive) != sha256:
                raise IntegrityError(f"archive of {m.version} changed on disk", path=str(m.archive))
            self.open(sha256)
        return m

    def _stored(self, sha256: str) -> StoredModel:
        m = self.get(sha256)
        if m is None:
            raise NotFoundError(
                f"no verified model {sha256[:12]} in {self.models}",
                hint="run `edgefleet agent status` to list kept versions",
            )
        return m

    # --- writing ---------------------------------------------------------------------------------

    def install(
        self,
        archive: Path,
        sha256: str,
        info: dict[str, Any],
        *,
        unpack_factor: float = 1.5,
        reserve_bytes: int = 0,
    ) -> Bundle:
        """Unpack a verified archive safely into ``models/<sha256>/``, mark it verified, return the bundle.

        The bundle library extracts and checks every file against the manifest once (``Bundle.open``);
        the returned ``Bundle`` is that verified object, for the health gate and the runtime to reuse.
        An already installed version is opened with its files re-checked. The archive is hard-linked (or
        copied) in, so a crash leaves it where it was. A leftover staging directory from an earlier crash
        is removed first.
        """
        from edgefleet.bundle import Bundle

        if self.get(sha256) is not None:
            return self.open(sha256)
        size = archive.stat().st_size
        need = int(size * (1 + unpack_factor)) + reserve_bytes
        free = shutil.disk_usage(self.models).free
        if free < need:
            raise DiskSpaceError(
                f"not enough disk to unpack {info.get('version')}: {free} bytes free, {need} needed",
                hint="free space in the state directory or lower keep_versions",
                free=free,
                needed=need,
            )
        staging = self.models / f".staging-{sha256}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            try:
                os.link(archive, staging / "archive.tar")
            except OSError:
                shutil.copyfile(archive, staging / "archive.tar")
            # Safe extraction and every file's sha256 and size, by the bundle library.
            manifest = Bundle.open(staging / "archive.tar", staging / "bundle").manifest
            if manifest.model_file not in manifest.files:
                raise IntegrityError(f"manifest does not hash its model file {manifest.model_file}")
            if manifest.name != info.get("name") or manifest.version != info.get("version"):
                raise IntegrityError(
                    f"bundle says {manifest.name} {manifest.version}, the signed target says "
                    f"{info.get('name')} {info.get('version')}",
                    hint="the publisher uploaded a mislabelled bundle; publish it again",
                )
            meta = {"sha256": sha256, "installed_at": time.time(), "activated_at": None, **info}
            if self.key is not None:
                meta["sealed"] = self._seal(staging, sha256, manifest.model_file)
            atomic_write(staging / "meta.json", json.dumps(meta, indent=1).encode())
            _fsync_tree(staging)
            os.replace(staging, self.models / sha256)
            fsync_dir(self.models)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            if e.errno == 28:  # ENOSPC
                raise DiskSpaceError(
                    f"disk full while unpacking {info.get('version')}",
                    hint="free space in the state directory",
                ) from e
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if self.key is not None:
            return self.open(sha256)
        return Bundle(self.models / sha256 / "bundle", manifest)

    def _seal(self, staging: Path, sha256: str, model_file: str) -> str:
        """Encrypt the checked model file beside the bundle; delete its plaintext and the archive."""
        assert self.key is not None
        plain = staging / "bundle" / model_file
        name = Path(model_file).name + SEALED_SUFFIX
        self.key.seal(plain.read_bytes(), staging / name, context=f"{sha256}/{name}")
        plain.unlink()
        (staging / "archive.tar").unlink(missing_ok=True)
        return name

    def set_current(self, sha256: str) -> StoredModel:
        """Point ``current`` at a verified version with one atomic rename."""
        m = self.get(sha256)
        if m is None:
            raise NotFoundError(f"cannot activate {sha256[:12]}: not a verified version in the store")
        tmp = self.root / f".current.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.path.join("models", sha256), tmp)
        os.replace(tmp, self.current_link)
        fsync_dir(self.root)
        self.touch_activated(sha256)
        return m

    def touch_activated(self, sha256: str) -> None:
        d = self.models / sha256
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            return
        meta["activated_at"] = time.time()
        atomic_write(d / "meta.json", json.dumps(meta, indent=1).encode())

    def remove(self, sha256: str) -> None:
        d = self.models / sha256
        if not d.exists():
            return
        # Rename first so a crash mid-delete leaves no half version that looks verified.
        trash = self.models / f".trash-{sha256}-{os.getpid()}"
        os.replace(d, trash)
        fsync_dir(self.models)
        shutil.rmtree(trash, ignore_errors=True)

    def gc(self, keep: int, protect: set[str]) -> list[str]:
        """Remove all but the ``keep`` most recent verified versions (never one in ``protect``)."""
        removed = []
        kept = 0
        for m in self.list():
            if m.sha256 in protect or kept < keep:
                kept += 1
                continue
            self.remove(m.sha256)
            removed.append(m.sha256)
        return removed

    def clean_leftovers(self) -> list[str]:
        """Remove staging/trash directories and temp symlinks a crash left behind."""
        gone = []
        for d in self.models.iterdir():
            if d.name.startswith((".staging-", ".trash-")) or (d.is_dir() and self.get(d.name) is None):
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
        for t in self.root.glob(".current.tmp-*"):
            with contextlib.suppress(OSError):
                t.unlink()
        return gone


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
