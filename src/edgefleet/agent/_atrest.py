"""Model files encrypted at rest on the device (optional): AES-256-GCM with a key kept outside the store.

The key is 32 random bytes in a file only the agent's user can read (created 0600 on first use). A sealed
file is ``nonce (12 bytes) || ciphertext+tag``; the associated data binds it to its version and file name,
so a sealed file copied to another version or name does not open. Decryption happens in memory.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgefleet._fs import atomic_write
from edgefleet.errors import ConfigError, IntegrityError

__all__ = ["ModelKey", "SEALED_SUFFIX"]

SEALED_SUFFIX = ".enc"
_NONCE = 12
_KEY = 32


class ModelKey:
    """The device's model key: seals and opens model files.

    Args:
        path: the key file; created (0600, 256 random bits) if absent.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._aead = AESGCM(self._load_or_create())

    def _load_or_create(self) -> bytes:
        p = self.path
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it first: read theirs
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(_KEY))
                    f.flush()
                    os.fsync(f.fileno())
        try:
            key = p.read_bytes()
            mode = p.stat().st_mode & 0o777
        except OSError as e:
            raise ConfigError(
                f"cannot read the model key {p}: {e.strerror or e}",
                hint="the key file must be readable by the agent's user (model_key_file)",
            ) from e
        if len(key) != _KEY:
            raise ConfigError(
                f"the model key {p} holds {len(key)} bytes, not {_KEY}",
                hint="restore the key file; a new key cannot open models sealed with the old one",
            )
        if mode & 0o077:
            raise ConfigError(
                f"the model key {p} is readable by others (mode {mode:o})",
                hint=f"chmod 600 {p}",
            )
        return key

    def seal(self, plain: bytes, dest: Path, *, context: str) -> None:
        """Write ``plain`` encrypted to ``dest`` (0600, atomically), bound to ``context``."""
        nonce = secrets.token_bytes(_NONCE)
        atomic_write(dest, nonce + self._aead.encrypt(nonce, plain, context.encode()), mode=0o600)

    def open(self, src: Path, *, context: str) -> bytes:
        """The plaintext of a sealed file, authenticated.

        Raises:
            IntegrityError: tampered, truncated, sealed for another context, or another key.
        """
        blob = Path(src).read_bytes()
        try:
            if len(blob) < _NONCE + 16:
                raise InvalidTag
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], context.encode())
        except InvalidTag:
            raise IntegrityError(
                f"encrypted model {src} does not authenticate: tampered, or sealed with another key",
                hint=f"the model key is {self.path}; a kept version sealed with another key or changed on "
                "disk is refused (assign the release again to download it)",
                path=str(src),
            ) from None
