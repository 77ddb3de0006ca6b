"""The TUF image repository: a directory any static HTTP server can serve.

Layout (consistent snapshots, so a client never mixes two repository states)::

    REPO/metadata/1.root.json, N.root.json, root.json (copy of the newest root, for pinning)
    REPO/metadata/N.targets.json, N.snapshot.json, timestamp.json
    REPO/targets/<name>/<version>/<sha256>.<variant>.tar
    REPO/targets/<name>/<version>/<sha256>.<variant>.from-<old>.delta
    REPO/.edgefleet/  lock, config.json, tmp/ (never read by clients)

Crash safety: every file is written tmp + fsync + rename, in an order where each rename leaves a
valid repository: target files first, then ``N+1.targets.json`` (the publish is now durable),
then ``N+1.snapshot.json``, then ``timestamp.json`` (clients see it). The current version of each
role is the highest version on disk, so the server's next ``refresh_timestamp`` finishes a publish
that was interrupted (or made on a publisher machine without the online keys).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository as TufRepository

from edgefleet._fs import atomic_write, fsync_dir
from edgefleet.errors import (
    KeyStoreError,
    NotFoundError,
    RegistryError,
)
from edgefleet.protocol._targets import hashed_target_path
from edgefleet.registry import _publishing, _rotation
from edgefleet.registry._config import RegistryConfig
from edgefleet.registry._fs import clear_dir, exclusive_lock
from edgefleet.registry._keys import KeyStore
from edgefleet.registry._published import (
    PublishedBundle,
    PublishResult,
    published_from,
    semver_key,
    target_path_for,
    utc_now,
)
from edgefleet.registry._rotation import RotationResult

__all__ = ["RefreshResult", "Repository"]

log = logging.getLogger(__name__)

_VERSIONED = re.compile(r"^([1-9]\d*)\.(root|targets|snapshot)\.json$")
_TOP_ROLES = ("root", "targets", "snapshot", "timestamp")


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshResult:
    """What ``Repository.refresh_timestamp`` signed."""

    timestamp_version: int
    snapshot_version: int
    targets_version: int
    expires: datetime
    snapshot_resigned: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["expires"] = self.expires.isoformat()
        return d


# --- the repository --------------------------------------------------------------------------


class Repository(TufRepository):
    """A TUF image repository on local disk, built on ``tuf.repository.Repository``.

    Read-only use (``list_versions``, ``show``, ``status``) needs no keys. Writing needs the keys
    of the roles it signs: ``publish`` the targets key (plus the online snapshot and timestamp keys
    to make the release visible at once), ``refresh_timestamp`` the timestamp key, ``rotate_key``
    a threshold of root keys.

    Args:
        repo_dir: the repository directory (``metadata/`` and ``targets/`` inside).
        keys: a ``KeyStore`` or a key directory; ``None`` for read-only use.
        config: settings; default: the ones saved by ``Repository.init``, else the environment.
    """

    def __init__(
        self,
        repo_dir: str | os.PathLike[str],
        keys: KeyStore | str | os.PathLike[str] | None = None,
        config: RegistryConfig | None = None,
    ) -> None:
        self._setup(repo_dir, keys)
        if not (self.metadata_dir / "1.root.json").is_file():
            raise RegistryError(
                f"no edgefleet repository at {self.repo_dir} ({self.metadata_dir / '1.root.json'} is missing)",
                hint="create one with `edgefleet registry init REPO --keys KEYS`, or pass the right --repo",
                repo=str(self.repo_dir),
            )
        self.config = config or self._load_config()

    def _setup(self, repo_dir: str | os.PathLike[str], keys: Any) -> None:
        self.repo_dir = Path(repo_dir)
        self.metadata_dir = self.repo_dir / "metadata"
        self.targets_dir = self.repo_dir / "targets"
        self._state_dir = self.repo_dir / ".edgefleet"
        self._tmp_dir = self._state_dir / "tmp"
        self.keys: KeyStore | None = keys if keys is None or isinstance(keys, KeyStore) else KeyStore(keys)
        self._initializing = False
        self._extra_signers: dict[str, list[Any]] = {}
        self._timestamp_expiry: timedelta | None = None
        self.config = RegistryConfig()

    @property
    def root_json_path(self) -> Path:
        """Newest root metadata, the file a device pins at enrollment."""
        return self.metadata_dir / "root.json"

    def __repr__(self) -> str:
        return f"Repository({str(self.repo_dir)!r})"

    # --- creation ----------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        repo_dir: str | os.PathLike[str],
        keys: KeyStore | str | os.PathLike[str],
        config: RegistryConfig | None = None,
    ) -> Repository:
        """Create a new, empty repository signed with ``keys`` (which must hold every role).

        Writes ``1.root.json`` (all root keys of the key store, its threshold), empty
        ``1.targets.json``, ``1.snapshot.json`` and ``timestamp.json``.
        """
        repo = cls.__new__(cls)
        repo._setup(repo_dir, keys)
        repo.config = config or RegistryConfig()
        store = repo._require_keys()
        for role in _TOP_ROLES:
            store.signers(role)  # raises KeyStoreError naming the missing role
        roots = store.public_keys("root")
        threshold = store.root_threshold or len(roots)
        if threshold > len(roots):
            raise KeyStoreError(
                f"root threshold is {threshold} but {store.dir} holds only {len(roots)} root keys",
                hint="create the repository where all root keys are present",
            )
        if repo.metadata_dir.is_dir() and any(repo.metadata_dir.iterdir()):
            raise RegistryError(
                f"{repo.repo_dir} already holds a repository",
                hint="open it with Repository(REPO) / `edgefleet registry list`, or choose an empty directory",
                repo=str(repo.repo_dir),
            )
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
        final_metadata = repo.metadata_dir
        with repo._locked():
            atomic_write(
                repo._state_dir / "config.json", repo.config.model_dump_json(indent=2).encode() + b"\n"
            )
            # Build the first metadata in a staging directory and rename it into place, so an
            # interrupted init leaves no half-made repository behind.
            staging = repo._state_dir / "init-metadata"
            clear_dir(staging)
            repo.metadata_dir = staging
            repo._initializing = True
            try:
                with repo.edit_root() as root:
                    root.consistent_snapshot = True
                    for key in roots:
                        root.add_key(key, "root")
                    root.roles["root"].threshold = threshold
                    for role in ("targets", "snapshot", "timestamp"):
                        for key in store.public_keys(role):
                            root.add_key(key, role)
                with repo.edit_targets():
                    pass
                with repo.edit_snapshot() as snapshot:
                    snapshot.meta = deepcopy(repo.targets_infos)
                with repo.edit_timestamp() as timestamp:
                    timestamp.snapshot_meta = deepcopy(repo.snapshot_info)
                if final_metadata.is_dir():
                    final_metadata.rmdir()  # empty (checked above)
                os.rename(staging, final_metadata)
                fsync_dir(repo.repo_dir)
            finally:
                repo._initializing = False
                repo.metadata_dir = final_metadata
        log.info(
            "initialized TUF repository %s (root threshold %d of %d)", repo.repo_dir, threshold, len(roots)
        )
        return repo

    def _load_config(self) -> RegistryConfig:
        p = self._state_dir / "config.json"
        if not p.is_file():
            return RegistryConfig()
        try:
            return RegistryConfig(**json.loads(p.read_text()))
        except (OSError, ValueError) as e:
            raise RegistryError(
                f"{p} is not a valid registry config: {e}",
                hint="fix or delete it (defaults are then used)",
            ) from e

    # --- storage (the tuf.repository.Repository contract) -------------------------------------

    def _versions(self, role: str) -> list[int]:
        if not self.metadata_dir.is_dir():
            return []
        out = []
        for p in self.metadata_dir.iterdir():
            m = _VERSIONED.match(p.name)
            if m and m.group(2) == role:
                out.append(int(m.group(1)))
        return sorted(out)

    def _current_path(self, role: str) -> Path | None:
        if role == "timestamp":
            p = self.metadata_dir / "timestamp.json"
            return p if p.is_file() else None
        versions = self._versions(role)
        return self.metadata_dir / f"{versions[-1]}.{role}.json" if versions else None

    def _load(self, path: Path) -> Metadata:
        try:
            return Metadata.from_bytes(path.read_bytes())
        except (OSError, DeserializationError) as e:
            raise RegistryError(
                f"cannot read repository metadata {path}: {e}",
                hint="the repository is damaged; restore metadata/ from a backup",
                path=str(path),
            ) from e

    def open(self, role: str) -> Metadata:
        """Current metadata of ``role`` (a fresh copy the caller may edit)."""
        if role not in _TOP_ROLES:
            raise RegistryError(f"unknown role {role!r}", hint="edgefleet uses the four top-level TUF roles")
        path = self._current_path(role)
        if path is None:
            if self._initializing:
                init = {"root": Root, "targets": Targets, "snapshot": Snapshot, "timestamp": Timestamp}[role]
                md = Metadata(init())
                md.signed.version = 0  # close() bumps it to 1
                return md
            raise RegistryError(
                f"{role} metadata is missing from {self.metadata_dir}",
                hint="the repository is incomplete; restore metadata/ from a backup",
            )
        return self._load(path)

    def _expiry(self, role: str) -> timedelta:
        if role == "timestamp" and self._timestamp_expiry is not None:
            return self._timestamp_expiry
        return getattr(self.config, f"{role}_expiry")

    def close(self, role: str, md: Metadata) -> None:
        """Bump version and expiry, sign with every trusted key we hold, check the threshold, write."""
        md.signed.version += 1
        md.signed.expires = utc_now() + self._expiry(role)
        md.signatures.clear()
        for signer in self._signers_for(role, md):
            md.sign(signer, append=True)
        self._check_threshold(role, md)
        data = md.to_bytes(JSONSerializer(compact=False))
        if role == "timestamp":
            atomic_write(self.metadata_dir / "timestamp.json", data)
        else:
            atomic_write(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
            if role == "root":
                atomic_write(self.root_json_path, data)
        log.debug("wrote %s v%d (expires %s)", role, md.signed.version, md.signed.expires.isoformat())

    def _meta_file(self, role: str) -> MetaFile:
        path = self._current_path(role)
        if path is None:
            return MetaFile(version=0)
        data = path.read_bytes()
        version = int(path.name.split(".", 1)[0])
        return MetaFile(
            version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()}
        )

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": self._meta_file("targets")}

    @property
    def snapshot_info(self) -> MetaFile:
        return self._meta_file("snapshot")

    # --- keys --------------------------------------------------------------------------------

    def _require_keys(self) -> KeyStore:
        if self.keys is None:
            raise KeyStoreError(
                "this operation signs metadata but the repository was opened without keys",
                hint="pass --keys DIR (Repository(repo, keys=...))",
            )
        return self.keys

    def _trusted_ids(self, role: str, md: Metadata | None = None) -> set[str]:
        ids: set[str] = set()
        if role == "root" and md is not None:
            ids |= set(md.signed.roles["root"].keyids)
        if not (self._initializing and self._current_path("root") is None):
            ids |= set(self.root().roles[role].keyids)
        return ids

    def _signers_for(self, role: str, md: Metadata | None = None) -> list[Any]:
        store = self._require_keys()
        trusted = self._trusted_ids(role, md)
        chosen = [
            s for s in (store.signers(role) if store.has(role) else []) if s.public_key.keyid in trusted
        ]
        for s in self._extra_signers.get(role, []):
            if all(c.public_key.keyid != s.public_key.keyid for c in chosen):
                chosen.append(s)
        if not chosen:
            if not store.has(role):
                store.signers(role)  # raises the "no <role> key in DIR" error
            held = ", ".join(s.public_key.keyid[:16] for s in store.signers(role))
            raise KeyStoreError(
                f"the {role} key in {store.dir} ({held}) is not one this repository trusts "
                f"(root trusts {', '.join(k[:16] for k in sorted(trusted)) or 'none'})",
                hint=f"use the current {role} key, or rotate it with `edgefleet keys rotate {role}`",
                role=role,
            )
        return chosen

    def _can_sign(self, role: str) -> bool:
        try:
            self._signers_for(role)
        except KeyStoreError:
            return False
        return True

    def _check_threshold(self, role: str, md: Metadata) -> None:
        if role == "root":
            prev = None if self._current_path("root") is None else self.root()
            result = md.signed.get_root_verification_result(prev, md.signed_bytes, md.signatures)
            if not result:
                need = md.signed.roles["root"].threshold
                raise KeyStoreError(
                    f"new root metadata needs {need} root signatures but the keys in "
                    f"{self._require_keys().dir} provide {len(result.signed)}",
                    hint="bring together enough root keys (the threshold) to sign root changes",
                    role="root",
                )
            return
        result = self.root().get_verification_result(role, md.signed_bytes, md.signatures)
        if not result:
            raise KeyStoreError(
                f"{role} metadata needs {result.threshold} signatures, got {len(result.signed)}",
                hint=f"add the missing {role} keys to the key directory",
                role=role,
            )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with exclusive_lock(self._state_dir / "lock", timeout=self.config.lock_timeout):
            clear_dir(self._tmp_dir)  # leftovers of a writer that died; we hold the lock now
            try:
                yield
            finally:
                clear_dir(self._tmp_dir)

    # --- publishing --------------------------------------------------------------------------

    def publish(self, archive: str | os.PathLike[str], *, delta: bool = True) -> PublishResult:
        """Add a bundle archive (and deltas from earlier versions) as signed targets.

        Args:
            archive: a bundle archive from ``edgefleet.bundle.create_bundle``.
            delta: also publish a delta from the previous version(s) of the same name+variant.

        Returns:
            ``PublishResult``; ``unchanged=True`` when the same bytes were already published.

        Raises:
            VersionExistsError: name+version+variant is published with different bytes.
            KeyStoreError: the targets key is missing or not trusted.
            BundleError: the archive is not a readable bundle.
        """
        return _publishing.publish(self, archive, delta=delta)

    def _pending(self) -> bool:
        snap = self.snapshot()
        return (
            snap.meta.get("targets.json") is None
            or snap.meta["targets.json"].version < self.targets().version
        )

    # --- online role ------------------------------------------------------------------------

    def refresh_timestamp(self, expires_in: timedelta | None = None) -> RefreshResult:
        """Re-sign timestamp (and snapshot if targets changed or it expires soon) with the online keys.

        The server calls this well before ``timestamp_expiry`` runs out; a device that keeps seeing
        an expired timestamp knows the server is frozen or replayed.

        Args:
            expires_in: lifetime of this timestamp (default ``config.timestamp_expiry``).
        """
        store = self._require_keys()
        store.signers("timestamp")
        with self._locked():
            self._verify_state()
            snap = self.snapshot()
            soon = utc_now() + self.config.snapshot_expiry / 2
            resign = snap.expires <= soon or (
                snap.meta.get("targets.json") is None
                or snap.meta["targets.json"].version < self.targets().version
            )
            if resign:
                self.do_snapshot(force=snap.expires <= soon)
            self._timestamp_expiry = expires_in
            try:
                self.do_timestamp(force=True)
            finally:
                self._timestamp_expiry = None
            self._warn_expiry()
            ts = self.timestamp()
            return RefreshResult(
                ts.version,
                ts.snapshot_meta.version,
                self.targets().version,
                ts.expires,
                snapshot_resigned=resign,
            )

    def _verify_state(self) -> None:
        """Refuse to sign on top of metadata the trusted chain does not vouch for (e.g. a dropped-in file)."""
        versions = self._versions("root")
        if versions != list(range(1, len(versions) + 1)):
            raise RegistryError(
                f"root metadata versions in {self.metadata_dir} are not contiguous: {versions}",
                hint="the repository is damaged; restore metadata/ from a backup",
            )
        prev = None
        for v in versions:
            md = self._load(self.metadata_dir / f"{v}.root.json")
            ok = md.signed.version == v and md.signed.get_root_verification_result(
                prev, md.signed_bytes, md.signatures
            )
            if not ok:
                raise RegistryError(
                    f"{v}.root.json is not signed by the root keys that version {v - 1 or 1} trusts",
                    hint="someone wrote root metadata without the root threshold; remove that file",
                    path=str(self.metadata_dir / f"{v}.root.json"),
                )
            prev = md.signed
        self._verify_current_targets()

    def _verify_current_targets(self) -> None:
        md = self.open("targets")
        try:
            self.root().verify_delegate("targets", md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            raise RegistryError(
                f"targets metadata v{md.signed.version} is not signed by the key root trusts: {e}",
                hint="someone wrote targets with a wrong key; remove that file or re-publish with the right key",
            ) from e

    def _warn_expiry(self) -> None:
        soon = utc_now() + self.config.expiry_warning
        for role in ("root", "targets"):
            expires = self.open(role).signed.expires
            if expires <= soon:
                log.warning(
                    "%s metadata expires %s; re-sign it (publish for targets, Repository.renew_root for root)",
                    role,
                    expires,
                )

    # --- key rotation ------------------------------------------------------------------------

    def rotate_key(self, role: str, *, new_signer: Any | None = None) -> RotationResult:
        """Replace the ``role`` key through a new root version (see ``edgefleet.registry._rotation.rotate_key``)."""
        return _rotation.rotate_key(self, role, new_signer=new_signer)

    def rotate_root(self, *, new_signers: list[Any] | None = None) -> RotationResult:
        """Replace every root key through a new root version (see ``edgefleet.registry._rotation.rotate_root``)."""
        return _rotation.rotate_root(self, new_signers=new_signers)

    def renew_root(self) -> int:
        """Re-sign root unchanged with a fresh expiry (needs the root threshold); returns the new version."""
        return _rotation.renew_root(self)

    # --- reading -----------------------------------------------------------------------------

    def list_versions(self, name: str | None = None) -> list[PublishedBundle]:
        """Published bundles (all, or of one name), by name, variant and semver."""
        found = [p for p in published_from(self.targets()).values() if name is None or p.name == name]
        return sorted(found, key=lambda p: (p.name, p.variant, semver_key(p.version)))

    def show(self, name: str, version: str, variant: str) -> PublishedBundle:
        """One published bundle with its manifest (read from the stored archive) and deltas."""
        tpath = target_path_for(name, version, variant)
        pub = published_from(self.targets()).get((name, version, variant))
        if pub is None:
            raise NotFoundError(
                f"{tpath} is not published in {self.repo_dir}",
                hint="see what is published with `edgefleet registry list`",
                target=tpath,
            )
        archive = self.targets_dir / pub.url_path
        if not archive.is_file():
            raise RegistryError(
                f"{tpath} is listed but its file {archive} is missing",
                hint="the repository is damaged; restore targets/ from a backup",
            )
        from edgefleet.bundle import read_manifest

        return replace(pub, manifest=read_manifest(archive))

    def target_file(self, target_path: str) -> Path:
        """Local path of a published target (the hash-prefixed file under ``targets/``)."""
        tf = self.targets().targets.get(target_path)
        if tf is None:
            raise NotFoundError(
                f"{target_path} is not a published target", hint="see `edgefleet registry list`"
            )
        return self.targets_dir / hashed_target_path(target_path, tf.hashes["sha256"])

    def status(self) -> dict[str, Any]:
        """Versions and expiry of every role, and whether a publish waits for the online keys."""
        out: dict[str, Any] = {}
        for role in _TOP_ROLES:
            s = self.open(role).signed
            out[role] = {"version": s.version, "expires": s.expires.isoformat(), "expired": s.is_expired()}
        out["pending"] = self._pending()
        out["root_threshold"] = self.root().roles["root"].threshold
        out["consistent_snapshot"] = bool(self.root().consistent_snapshot)
        return out
