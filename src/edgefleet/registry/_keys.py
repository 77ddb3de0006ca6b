"""Signing keys on disk: one PEM file per key, 0600 files in a 0700 directory."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write, fsync_dir
from edgefleet.errors import KeyStoreError

__all__ = ["ROLES", "KeyStore", "KeyInfo", "init_keys"]

log = logging.getLogger(__name__)

ROLES = ("root", "targets", "snapshot", "timestamp")
_KEY_FILE = re.compile(r"^(root|targets|snapshot|timestamp)-([0-9a-f]{16})\.pem$")
_INDEX = "keystore.json"


@dataclass(frozen=True)
class KeyInfo:
    """One private key found in a key directory."""

    role: str
    keyid: str
    path: Path
    mode: int

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "keyid": self.keyid, "path": str(self.path), "mode": f"{self.mode:04o}"}


class KeyStore:
    """The signing keys in one directory; a machine may hold only some roles.

    A publisher machine holds the targets key only; the server holds snapshot and timestamp;
    root keys stay offline. Every method that needs a key it does not have raises
    ``KeyStoreError`` naming the role and the directory.

    Args:
        keys_dir: directory written by ``init_keys`` (or a copy of some of its files).
    """

    def __init__(self, keys_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(keys_dir)
        if not self.dir.is_dir():
            raise KeyStoreError(
                f"key directory {self.dir} does not exist",
                hint="create keys with `edgefleet keys init DIR` or pass the right --keys",
                keys_dir=str(self.dir),
            )
        dmode = stat.S_IMODE(self.dir.stat().st_mode)
        if dmode & 0o077:
            log.warning("key directory %s has mode %04o; 0700 is expected", self.dir, dmode)
        self._signers: dict[str, list[Any]] = {r: [] for r in ROLES}
        self._infos: list[KeyInfo] = []
        for path in sorted(self.dir.iterdir()):
            m = _KEY_FILE.match(path.name)
            if not m:
                continue
            self._load(path, m.group(1))
        self.root_threshold: int | None = self._read_index().get("root_threshold")

    # --- loading ---------------------------------------------------------------------------

    def _load(self, path: Path, role: str) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from securesystemslib.signer import CryptoSigner, SSlibKey

        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyStoreError(
                f"private key {path} can be read by other users (mode {mode:04o})",
                hint=f"run `chmod 600 {path}`; if others may have copied it, rotate the {role} key",
                path=str(path),
            )
        try:
            private = load_pem_private_key(path.read_bytes(), password=None)
            signer = CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))
        except (ValueError, TypeError, OSError) as e:
            raise KeyStoreError(
                f"cannot load private key {path}: {e}",
                hint="the file must be an unencrypted PKCS#8 PEM key as written by `edgefleet keys init`",
                path=str(path),
            ) from e
        keyid = signer.public_key.keyid
        if not keyid.startswith(_KEY_FILE.match(path.name).group(2)):
            raise KeyStoreError(
                f"key file {path.name} holds key {keyid[:16]}, not the key its name says",
                hint="do not rename key files; restore the original file",
                path=str(path),
            )
        self._signers[role].append(signer)
        self._infos.append(KeyInfo(role, keyid, path, mode))

    def _read_index(self) -> dict[str, Any]:
        p = self.dir / _INDEX
        if not p.exists():
            return {}
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise KeyStoreError(f"{p} is not valid JSON: {e}", hint="restore it from a backup") from e
        return data if isinstance(data, dict) else {}

    # --- queries ---------------------------------------------------------------------------

    @property
    def roles(self) -> list[str]:
        """Roles this directory holds at least one key for."""
        return [r for r in ROLES if self._signers[r]]

    def has(self, role: str) -> bool:
        return bool(self._signers.get(role))

    def key_files(self) -> list[KeyInfo]:
        """Every key file found, sorted by role and file name."""
        return sorted(self._infos, key=lambda k: (ROLES.index(k.role), k.path.name))

    def signers(self, role: str) -> list[Any]:
        """All signers for ``role`` (securesystemslib ``CryptoSigner``); raises if there is none."""
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}", hint=f"use one of {', '.join(ROLES)}")
        if not self._signers[role]:
            raise KeyStoreError(
                f"no {role} key in {self.dir}",
                hint=_MISSING_HINT[role],
                role=role,
                keys_dir=str(self.dir),
            )
        return list(self._signers[role])

    def public_keys(self, role: str) -> list[Any]:
        """Public keys (``SSlibKey``) of the ``role`` keys held here."""
        return [s.public_key for s in self.signers(role)]

    # --- changes ---------------------------------------------------------------------------

    def add(self, role: str, signer: Any) -> Path:
        """Store a new private key for ``role`` (0600) and return its path."""
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}", hint=f"use one of {', '.join(ROLES)}")
        path = self.dir / f"{role}-{signer.public_key.keyid[:16]}.pem"
        atomic_write(path, signer.private_bytes, mode=0o600)
        self._signers[role].append(signer)
        self._infos.append(KeyInfo(role, signer.public_key.keyid, path, 0o600))
        return path

    def remove(self, role: str, keyid: str) -> None:
        """Delete the private key ``keyid`` of ``role`` (after it was rotated out)."""
        for info in list(self._infos):
            if info.role == role and info.keyid == keyid:
                info.path.unlink(missing_ok=True)
                fsync_dir(self.dir)
                self._infos.remove(info)
                self._signers[role] = [s for s in self._signers[role] if s.public_key.keyid != keyid]

    def __repr__(self) -> str:
        held = ", ".join(f"{r}:{len(self._signers[r])}" for r in ROLES if self._signers[r])
        return f"KeyStore({str(self.dir)!r}, {held or 'empty'})"


_MISSING_HINT = {
    "root": "root keys are kept offline; run this on the machine (or with the media) holding them",
    "targets": "copy the publisher's targets-*.pem into this key directory (mode 0600) or pass --keys",
    "snapshot": "the snapshot key is an online key on the registry server; run this there",
    "timestamp": "the timestamp key is an online key on the registry server; run this there",
}


def init_keys(
    keys_dir: str | os.PathLike[str],
    *,
    root_keys: int = 3,
    root_threshold: int = 2,
    overwrite: bool = False,
) -> KeyStore:
    """Create a fresh set of ed25519 keys: ``root_keys`` root keys, one targets, snapshot and timestamp key.

    Args:
        keys_dir: directory to create (mode 0700); each private key is a 0600 PEM file.
        root_keys: how many root keys to create.
        root_threshold: how many root keys must sign a new root.
        overwrite: replace the keys already in ``keys_dir`` (they are deleted).

    Returns:
        The new ``KeyStore``.
    """
    from securesystemslib.signer import CryptoSigner

    if root_keys < 1:
        raise KeyStoreError(f"root_keys must be at least 1, got {root_keys}", hint="e.g. --root-keys 3")
    if not 1 <= root_threshold <= root_keys:
        raise KeyStoreError(
            f"root threshold {root_threshold} must be between 1 and the number of root keys ({root_keys})",
            hint="e.g. 3 root keys with threshold 2",
        )
    d = Path(keys_dir)
    existing = [p for p in d.iterdir() if _KEY_FILE.match(p.name)] if d.is_dir() else []
    if existing and not overwrite:
        raise KeyStoreError(
            f"{d} already holds {len(existing)} keys",
            hint="keep them (a repository may trust them), choose another directory, or pass --overwrite",
            keys_dir=str(d),
        )
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for p in existing:
        p.unlink()
    store = KeyStore(d)
    for _ in range(root_keys):
        store.add("root", CryptoSigner.generate_ed25519())
    for role in ("targets", "snapshot", "timestamp"):
        store.add(role, CryptoSigner.generate_ed25519())
    index = {
        "format": 1,
        "root_threshold": root_threshold,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write(d / _INDEX, json.dumps(index, indent=2).encode() + b"\n", mode=0o600)
    store.root_threshold = root_threshold
    log.info(
        "created %d root keys (threshold %d) and targets/snapshot/timestamp keys in %s",
        root_keys,
        root_threshold,
        d,
    )
    return store
