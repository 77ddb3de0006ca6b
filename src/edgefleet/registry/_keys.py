"""Signing keys on disk: one PEM file per key, 0600 files in 0700 directories.

Root keys may live apart from the others, one folder each (e.g. separate USB sticks): the key
directory's ``keystore.json`` remembers those folders, and ``KeyStore(..., root_dirs=...)``
names them explicitly. Private keys may be encrypted with a passphrase (PKCS#8 with
``cryptography``'s ``BestAvailableEncryption``); an encrypted key is decrypted when the store
is opened with the passphrase and stays locked otherwise, so a machine that signs only with
unencrypted online keys needs none.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet._fs import atomic_write, fsync_dir
from edgefleet.errors import KeyStoreError

__all__ = ["OFFLINE_DIR", "PASSPHRASE_ENV", "ROLES", "KeyInfo", "KeyStore", "init_keys"]

log = logging.getLogger(__name__)

ROLES = ("root", "targets", "snapshot", "timestamp")
OFFLINE_ROLES = ("root", "targets")
PASSPHRASE_ENV = "EDGEFLEET_KEYS_PASSPHRASE"
OFFLINE_DIR = "offline"  # KEYS/offline: root keys kept apart from the online keys until moved
_KEY_FILE = re.compile(r"^(root|targets|snapshot|timestamp)-([0-9a-f]{16})\.pem$")
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_INDEX = "keystore.json"
_PASSPHRASE_HINT = f"pass --passphrase-file FILE or set {PASSPHRASE_ENV}"

Passphrase = str | bytes | None


@dataclass(frozen=True)
class KeyInfo:
    """One private key found in a key directory (or a root folder).

    ``keyid`` is the full key id once the key is loaded; for an encrypted key opened without its
    passphrase (``locked``) it is the 16-hex prefix its file name carries.
    """

    role: str
    keyid: str
    path: Path
    mode: int
    encrypted: bool = False
    locked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "keyid": self.keyid,
            "path": str(self.path),
            "dir": str(self.path.parent),
            "mode": f"{self.mode:04o}",
            "encrypted": self.encrypted,
            "locked": self.locked,
        }

    def matches(self, keyid: str) -> bool:
        return keyid.startswith(self.keyid) if self.locked else keyid == self.keyid


def _as_bytes(passphrase: Passphrase) -> bytes | None:
    if passphrase is None:
        return None
    b = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
    if not b:
        raise KeyStoreError(
            "the key passphrase is empty", hint=_PASSPHRASE_HINT + " with a non-empty passphrase"
        )
    return b


def _secure_dir(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(d, 0o700)
    except OSError as e:  # e.g. a FAT-formatted stick: permissions are the medium's
        log.warning("cannot set mode 0700 on %s: %s", d, e)


class KeyStore:
    """The signing keys in one directory (plus root folders); a machine may hold only some roles.

    A publisher machine holds the targets key only; the server holds snapshot and timestamp;
    root keys stay offline. Every method that needs a key it does not have raises
    ``KeyStoreError`` naming the role and the directory.

    Args:
        keys_dir: directory written by ``init_keys`` (or a copy of some of its files).
        root_dirs: further folders holding root keys (e.g. mounted USB sticks); ``KEYS/offline``
            and the folders ``init_keys`` recorded are searched as well when they exist.
        passphrase: decrypts encrypted keys; a wrong one is refused at once. Without it encrypted
            keys stay locked and ``signers`` of their role raises.
    """

    PASSPHRASE_ENV = PASSPHRASE_ENV  # where the CLI and the server read the passphrase from

    def __init__(
        self,
        keys_dir: str | os.PathLike[str],
        *,
        root_dirs: Iterable[str | os.PathLike[str]] = (),
        passphrase: Passphrase = None,
    ) -> None:
        self.dir = Path(keys_dir)
        if not self.dir.is_dir():
            raise KeyStoreError(
                f"key directory {self.dir} does not exist",
                hint="create keys with `edgefleet keys init DIR` or pass the right --keys",
                keys_dir=str(self.dir),
            )
        self._passphrase = _as_bytes(passphrase)
        self._signers: dict[str, list[Any]] = {r: [] for r in ROLES}
        self._infos: list[KeyInfo] = []
        index = self._read_index()
        self.root_threshold: int | None = index.get("root_threshold")
        self.encrypted_roles: set[str] = set(index.get("encrypted_roles") or ())
        explicit = [Path(p) for p in root_dirs]
        for p in explicit:
            if not p.is_dir():
                raise KeyStoreError(
                    f"root key folder {p} does not exist",
                    hint="mount the medium holding the root key, or pass the right --root-dir",
                    root_dir=str(p),
                )
        recorded = [self.dir / p for p in index.get("root_dirs") or ()]
        self.root_dirs: list[Path] = []
        seen: set[Path] = {self.dir.resolve()}
        self.absent_root_dirs: list[Path] = [d for d in recorded if not d.is_dir()]  # e.g. sticks not mounted
        for d in [*explicit, self.dir / OFFLINE_DIR, *recorded]:
            if d.is_dir() and d.resolve() not in seen:
                seen.add(d.resolve())
                self.root_dirs.append(d)
        self._scan(self.dir, roles=ROLES)
        for d in self.root_dirs:
            self._scan(d, roles=("root",))

    # --- loading ---------------------------------------------------------------------------

    def _scan(self, d: Path, *, roles: Sequence[str]) -> None:
        dmode = stat.S_IMODE(d.stat().st_mode)
        if dmode & 0o077:
            log.warning("key directory %s has mode %04o; 0700 is expected", d, dmode)
        for path in sorted(d.iterdir()):
            m = _KEY_FILE.match(path.name)
            if m and m.group(1) in roles and not any(i.path.name == path.name for i in self._infos):
                self._load(path, m.group(1), m.group(2))

    def _load(self, path: Path, role: str, prefix: str) -> None:
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
            data = path.read_bytes()
        except OSError as e:
            raise KeyStoreError(
                f"cannot read private key {path}: {e}", hint="check the file", path=str(path)
            ) from e
        encrypted = data.lstrip().startswith(_ENCRYPTED_PEM)
        if encrypted and self._passphrase is None:
            self._infos.append(KeyInfo(role, prefix, path, mode, encrypted=True, locked=True))
            return
        try:
            private = load_pem_private_key(data, password=self._passphrase if encrypted else None)
            signer = CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))
        except (ValueError, TypeError) as e:
            if encrypted:
                raise KeyStoreError(
                    f"cannot decrypt private key {path}: wrong passphrase",
                    hint=f"check the passphrase ({_PASSPHRASE_HINT}); nothing was signed or written",
                    path=str(path),
                ) from e
            raise KeyStoreError(
                f"cannot load private key {path}: {e}",
                hint="the file must be a PKCS#8 PEM key as written by `edgefleet keys init`",
                path=str(path),
            ) from e
        keyid = signer.public_key.keyid
        if not keyid.startswith(prefix):
            raise KeyStoreError(
                f"key file {path.name} holds key {keyid[:16]}, not the key its name says",
                hint="do not rename key files; restore the original file",
                path=str(path),
            )
        if any(s.public_key.keyid == keyid for s in self._signers[role]):
            return  # the same key copied into two folders
        self._signers[role].append(signer)
        self._infos.append(KeyInfo(role, keyid, path, mode, encrypted=encrypted))

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
        """Roles this store holds at least one key for (locked ones included)."""
        return [r for r in ROLES if self.has(r)]

    def has(self, role: str) -> bool:
        return bool(self._signers.get(role)) or any(i.role == role and i.locked for i in self._infos)

    def can_sign(self, role: str) -> bool:
        """Whether ``signers(role)`` would succeed: keys held and none of them locked."""
        return bool(self._signers.get(role)) and not self._locked(role)

    def _locked(self, role: str) -> list[KeyInfo]:
        return [i for i in self._infos if i.role == role and i.locked]

    def key_files(self) -> list[KeyInfo]:
        """Every key file found, sorted by role and file name."""
        return sorted(self._infos, key=lambda k: (ROLES.index(k.role), k.path.name, str(k.path)))

    def signers(self, role: str) -> list[Any]:
        """All signers for ``role`` (securesystemslib ``CryptoSigner``); raises if there is none."""
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}", hint=f"use one of {', '.join(ROLES)}")
        if locked := self._locked(role):
            raise KeyStoreError(
                f"the {role} key {locked[0].path} is encrypted and no passphrase was given",
                hint=_PASSPHRASE_HINT,
                role=role,
                path=str(locked[0].path),
            )
        if not self._signers[role]:
            raise KeyStoreError(
                f"no {role} key in {self.dir}"
                + (f" or {', '.join(map(str, self.root_dirs))}" if role == "root" and self.root_dirs else ""),
                hint=_MISSING_HINT[role],
                role=role,
                keys_dir=str(self.dir),
            )
        return list(self._signers[role])

    def public_keys(self, role: str) -> list[Any]:
        """Public keys (``SSlibKey``) of the ``role`` keys held here."""
        return [s.public_key for s in self.signers(role)]

    # --- changes ---------------------------------------------------------------------------

    def _encrypts(self, role: str) -> bool:
        return role in self.encrypted_roles or any(i.role == role and i.encrypted for i in self._infos)

    def check_can_add(self, role: str) -> None:
        """Raise before anything is written if a new ``role`` key could not be stored as it must be."""
        if role not in ROLES:
            raise KeyStoreError(f"unknown role {role!r}", hint=f"use one of {', '.join(ROLES)}")
        if self._encrypts(role) and self._passphrase is None:
            raise KeyStoreError(
                f"{role} keys in {self.dir} are stored encrypted and no passphrase was given",
                hint=_PASSPHRASE_HINT,
                role=role,
            )

    def _default_dir(self, role: str) -> Path:
        return self.root_dirs[0] if role == "root" and self.root_dirs else self.dir

    def root_homes(self, old_keyids: Iterable[str], count: int) -> list[Path]:
        """Folders for ``count`` new root keys replacing ``old_keyids``: each takes an old key's folder.

        New keys beyond the old ones held here go to root folders holding none of them, then to
        ``KEYS/offline`` (never two to the same stick while another folder is free).
        """
        old = set(old_keyids)
        homes = [i.path.parent for i in self.key_files() if i.role == "root" and i.keyid in old]
        used = {h.resolve() for h in homes}
        spare = [d for d in self.root_dirs if d.resolve() not in used]
        while len(homes) < count:
            d = spare.pop(0) if spare else self.dir / OFFLINE_DIR
            homes.append(d)
            if d == self.dir / OFFLINE_DIR:
                log.warning("new root key written to %s; move it to its own offline medium", d)
        return homes[:count]

    def add(self, role: str, signer: Any, *, directory: str | os.PathLike[str] | None = None) -> Path:
        """Store a new private key for ``role`` (0600, encrypted where the role's keys are) and return its path.

        Root keys go to ``directory``, else the first root folder, else the key directory.
        """
        self.check_can_add(role)
        d = Path(directory) if directory is not None else self._default_dir(role)
        if not d.is_dir():
            _secure_dir(d)
        path = d / f"{role}-{signer.public_key.keyid[:16]}.pem"
        encrypted = self._encrypts(role)
        atomic_write(path, _pem(signer, self._passphrase if encrypted else None), mode=0o600)
        self._signers[role].append(signer)
        self._infos.append(KeyInfo(role, signer.public_key.keyid, path, 0o600, encrypted=encrypted))
        return path

    def remove(self, role: str, keyid: str) -> None:
        """Delete the private key ``keyid`` of ``role`` (after it was rotated out)."""
        for info in list(self._infos):
            if info.role == role and info.matches(keyid):
                info.path.unlink(missing_ok=True)
                fsync_dir(info.path.parent)
                self._infos.remove(info)
                self._signers[role] = [s for s in self._signers[role] if s.public_key.keyid != keyid]

    def __repr__(self) -> str:
        held = ", ".join(f"{r}:{len(self._signers[r])}" for r in ROLES if self._signers[r])
        return f"KeyStore({str(self.dir)!r}, {held or 'empty'})"


def _pem(signer: Any, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM of ``signer``'s private key, encrypted with ``passphrase`` when one is given."""
    if passphrase is None:
        return signer.private_bytes
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(signer.private_bytes, password=None)
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


_MISSING_HINT = {
    "root": "root keys are kept offline; run this with the media holding them (--root-dir PATH, repeatable)",
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
    root_dirs: Sequence[str | os.PathLike[str]] | None = None,
    passphrase: Passphrase = None,
    encrypt_online: bool = False,
) -> KeyStore:
    """Create a fresh set of ed25519 keys: ``root_keys`` root keys, one targets, snapshot and timestamp key.

    Args:
        keys_dir: directory to create (mode 0700); each private key is a 0600 PEM file.
        root_keys: how many root keys to create.
        root_threshold: how many root keys must sign a new root.
        overwrite: replace the keys already in ``keys_dir`` (they are deleted).
        root_dirs: where the root keys go: one folder for all of them, or one folder per root key
            (e.g. separate USB sticks); default ``keys_dir`` itself. Recorded in ``keystore.json``.
        passphrase: encrypt the root and targets keys (PKCS#8, best available encryption).
        encrypt_online: encrypt the snapshot and timestamp keys too (the server then needs the
            passphrase in ``EDGEFLEET_KEYS_PASSPHRASE`` to refresh the timestamp).

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
    secret = _as_bytes(passphrase)
    if encrypt_online and secret is None:
        raise KeyStoreError(
            "encrypting the online keys needs a passphrase", hint=_PASSPHRASE_HINT + " with --encrypt-online"
        )
    d = Path(keys_dir)
    homes = [Path(p) for p in root_dirs] if root_dirs else [d]
    if len(homes) not in (1, root_keys):
        raise KeyStoreError(
            f"{root_keys} root keys need one --root-dir for all of them or one per key, got {len(homes)}",
            hint=f"pass --root-dir {root_keys} times (one folder per key, e.g. one USB stick each)",
        )
    if len({h.resolve() for h in homes}) != len(homes):
        raise KeyStoreError("the same root folder was given twice", hint="give each root key its own folder")
    existing = [p for h in {d, *homes} if h.is_dir() for p in h.iterdir() if _KEY_FILE.match(p.name)]
    if existing and not overwrite:
        raise KeyStoreError(
            f"{d} already holds {len(existing)} keys"
            if all(p.parent == d for p in existing)
            else f"{d} and its root folders already hold {len(existing)} keys",
            hint="keep them (a repository may trust them), choose another directory, or pass --overwrite",
            keys_dir=str(d),
        )
    for h in {d, *homes}:
        _secure_dir(h)
    for p in existing:
        p.unlink()
    encrypted = (
        sorted(
            ({*OFFLINE_ROLES, "snapshot", "timestamp"} if encrypt_online else set(OFFLINE_ROLES)),
            key=ROLES.index,
        )
        if secret
        else []
    )
    index = {
        "format": 1,
        "root_threshold": root_threshold,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "root_dirs": [
            os.path.relpath(h.resolve(), d.resolve())
            if h.resolve().is_relative_to(d.resolve())
            else str(h.resolve())
            for h in homes
            if h.resolve() != d.resolve()
        ],
        "encrypted_roles": encrypted,
    }
    atomic_write(d / _INDEX, json.dumps(index, indent=2).encode() + b"\n", mode=0o600)
    store = KeyStore(d, passphrase=secret)
    for i in range(root_keys):
        store.add("root", CryptoSigner.generate_ed25519(), directory=homes[i % len(homes)])
    for role in ("targets", "snapshot", "timestamp"):
        store.add(role, CryptoSigner.generate_ed25519())
    store.root_threshold = root_threshold
    log.info(
        "created %d root keys (threshold %d) and targets/snapshot/timestamp keys in %s%s",
        root_keys,
        root_threshold,
        d,
        " (root and targets encrypted)" if secret else "",
    )
    return store
