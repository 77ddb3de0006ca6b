"""Key rotation of the image repository: a role's key, or every root key, replaced through a new root version.

Every rotation writes the next link of the root chain (``N+1.root.json``, signed by the root
threshold of version N and by the new keys where they are root keys), so a device pinned to an
older root follows the chain. New private keys are stored before the root that trusts them is
written; old ones are deleted only once it is. ``Repository.rotate_key``, ``rotate_root`` and
``renew_root`` delegate here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securesystemslib.signer import CryptoSigner

from edgefleet.errors import KeyStoreError
from edgefleet.registry._keys import KeyStore

if TYPE_CHECKING:
    from edgefleet.registry._repository import Repository

__all__ = ["ROTATABLE", "RotationResult", "renew_root", "require_root_threshold", "rotate_key", "rotate_root"]

log = logging.getLogger(__name__)

ROTATABLE = ("root", "targets", "snapshot", "timestamp")


@dataclass(frozen=True)
class RotationResult:
    """What ``Repository.rotate_key`` did."""

    role: str
    old_keyids: tuple[str, ...]
    new_keyids: tuple[str, ...]
    root_version: int
    key_paths: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rotate_key(repo: Repository, role: str, *, new_signer: Any | None = None) -> RotationResult:
    """Replace the ``role`` key with a new one in a new root version signed by the root threshold.

    The new private key is saved in the key store first (so a crash never leaves a root that
    trusts a key nobody holds). When the old key is at hand, the role's metadata is re-signed
    by old and new key before the new root is written, so devices verify it with either root;
    the old private key is deleted at the end.

    ``root`` is rotated by :meth:`rotate_root` (every root key at once).

    Args:
        role: ``root``, ``targets``, ``snapshot`` or ``timestamp``.
        new_signer: a securesystemslib signer to use instead of a freshly generated ed25519 key
            (e.g. a key held elsewhere); it is stored in the key store only if it has private bytes.
    """

    if role not in ROTATABLE:
        raise KeyStoreError(
            f"cannot rotate {role!r} keys here",
            hint=f"rotatable roles: {', '.join(ROTATABLE)}",
        )
    if role == "root":
        if new_signer is not None:
            raise KeyStoreError(
                "a root rotation replaces every root key; pass them to rotate_root(new_signers=...)",
                hint="call Repository.rotate_root",
            )
        return repo.rotate_root()
    store = require_root_threshold(repo, f"rotating the {role} key")
    store.check_can_add(role)  # e.g. encrypted targets keys but no passphrase: refuse before writing
    # The re-signing after the root change needs the online keys of the roles below ``role``.
    needed = {"targets": ("snapshot", "timestamp"), "snapshot": ("timestamp",), "timestamp": ()}
    for other in needed[role]:
        repo._signers_for(other)
    with repo._locked():
        repo._verify_state()
        root = repo.root()
        old_ids = tuple(root.roles[role].keyids)
        signer = new_signer or CryptoSigner.generate_ed25519()
        new_id = signer.public_key.keyid
        if new_id in old_ids or any(new_id in r.keyids for r in root.roles.values()):
            raise KeyStoreError(
                f"key {new_id[:16]} is already used by this repository",
                hint="a rotation needs a key no role uses yet",
            )
        key_path = store.add(role, signer) if hasattr(signer, "private_bytes") else Path("")
        old_held = any(s.public_key.keyid in old_ids for s in store.signers(role))

        def resign() -> None:
            if role == "targets":
                with repo.edit_targets():
                    pass
            if role in ("targets", "snapshot"):
                repo.do_snapshot(force=True)
            repo.do_timestamp(force=True)

        def new_root() -> None:
            with repo.edit_root() as r:
                for kid in old_ids:
                    r.revoke_key(kid, role)
                r.add_key(signer.public_key, role)

        repo._extra_signers = {role: [signer]}
        try:
            if old_held:
                resign()  # signed by old + new key: valid under the current and the next root
                new_root()
            else:
                new_root()  # without the old key there is no overlap; devices catch up at next refresh
                resign()
        finally:
            repo._extra_signers = {}
        for kid in old_ids:
            store.remove(role, kid)
        version = repo.root().version
        log.info(
            "rotated %s key %s -> %s (root v%d)",
            role,
            ",".join(k[:16] for k in old_ids),
            new_id[:16],
            version,
        )
        return RotationResult(role, old_ids, (new_id,), version, (str(key_path),))


def require_root_threshold(repo: Repository, what: str) -> KeyStore:
    """The key store, once it is known to hold the current root threshold."""
    store = repo._require_keys()
    root = repo.root()
    trusted_root = [
        s
        for s in (store.signers("root") if store.has("root") else [])
        if s.public_key.keyid in root.roles["root"].keyids
    ]
    if len(trusted_root) < root.roles["root"].threshold:
        raise KeyStoreError(
            f"{what} needs {root.roles['root'].threshold} root keys; "
            f"{', '.join(map(str, [store.dir, *store.root_dirs]))} hold {len(trusted_root)} trusted ones",
            hint="run this where the root keys (at least the threshold) are present; "
            "pass --root-dir PATH for each folder or medium holding one",
            role="root",
        )
    return store


def rotate_root(repo: Repository, *, new_signers: list[Any] | None = None) -> RotationResult:
    """Replace every root key with a fresh one (same count, same threshold) in a new root version.

    The new root is signed by the threshold of the old root keys *and* by the new keys, so a
    device that trusts the old root verifies it and moves on to the new keys (TUF's root chain);
    from then on, old root keys alone cannot sign a root any device accepts. The new private keys
    are saved before the new root is written; the old ones held here are deleted at the end. The
    other roles' keys and metadata are untouched.

    Args:
        new_signers: securesystemslib signers to use instead of fresh ed25519 keys (one per
            current root key, or at least the threshold); stored only if they have private bytes.
    """

    store = require_root_threshold(repo, "rotating the root keys")
    with repo._locked():
        repo._verify_state()
        root = repo.root()
        old_ids = tuple(root.roles["root"].keyids)
        threshold = root.roles["root"].threshold
        signers = list(new_signers or [CryptoSigner.generate_ed25519() for _ in old_ids])
        new_ids = tuple(s.public_key.keyid for s in signers)
        in_use = {k for r in root.roles.values() for k in r.keyids}
        if len(set(new_ids)) != len(new_ids) or in_use & set(new_ids):
            raise KeyStoreError(
                "a root rotation needs distinct keys that no role uses yet",
                hint="generate fresh keys for the new root",
            )
        if len(signers) < threshold:
            raise KeyStoreError(
                f"the root threshold is {threshold} but only {len(signers)} new root keys were given",
                hint=f"pass at least {threshold} new root keys",
            )
        homes = store.root_homes(old_ids, len(signers))
        store.check_can_add("root")
        paths = tuple(
            str(store.add("root", s, directory=home)) if hasattr(s, "private_bytes") else ""
            for s, home in zip(signers, homes, strict=True)
        )
        repo._extra_signers = {"root": signers}
        try:
            with repo.edit_root() as r:
                for kid in old_ids:
                    r.revoke_key(kid, "root")
                for s in signers:
                    r.add_key(s.public_key, "root")
        finally:
            repo._extra_signers = {}
        for kid in old_ids:
            store.remove("root", kid)
        version = repo.root().version
        log.info(
            "rotated root keys %s -> %s (root v%d)",
            ",".join(k[:16] for k in old_ids),
            ",".join(k[:16] for k in new_ids),
            version,
        )
        return RotationResult("root", old_ids, new_ids, version, paths)


def renew_root(repo: Repository) -> int:
    """Re-sign root unchanged with a fresh expiry (needs the root threshold); returns the new version."""
    require_root_threshold(repo, "renewing root")
    with repo._locked():
        repo._verify_state()
        with repo.edit_root():
            pass
        return repo.root().version
