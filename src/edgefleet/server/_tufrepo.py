"""The image repository as the server sees it: files to serve, a timestamp to keep fresh, releases to register."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from edgefleet.errors import ConflictError, InputError, NotFoundError, RegistryError
from edgefleet.server._audit import audit
from edgefleet.server._db import Database
from edgefleet.server._fit import default_device_classes
from edgefleet.server._models import Release, ReleaseVariant
from edgefleet.server._schemas import ReleaseRegister

__all__ = ["RepositoryService", "release_dict"]

log = logging.getLogger(__name__)

LOCK = "timestamp"


class RepositoryService:
    """Read access to the TUF repository on disk, and the online timestamp key's work.

    Args:
        repo_dir: the repository (``metadata/``, ``targets/``), written by ``edgefleet.registry``.
        keys_dir: holds the online snapshot/timestamp keys; without them the server only serves.
        refresh_margin_s: re-sign timestamp.json when it expires sooner than this.
    """

    def __init__(self, repo_dir: Path, keys_dir: Path | None, *, refresh_margin_s: float) -> None:
        self.repo_dir = Path(repo_dir)
        self.metadata_dir = self.repo_dir / "metadata"
        self.targets_dir = self.repo_dir / "targets"
        self.keys_dir = Path(keys_dir) if keys_dir else None
        self.margin_s = refresh_margin_s
        self._keys: Any = None
        self._keys_checked = False
        self._lock = threading.Lock()

    @property
    def root_json_path(self) -> Path:
        return self.metadata_dir / "root.json"

    @property
    def exists(self) -> bool:
        return (self.metadata_dir / "1.root.json").is_file()

    # --- serving -------------------------------------------------------------------------------

    def file(self, kind: str, rel: str) -> Path:
        """The file behind ``/repository/{kind}/{rel}``; refuses anything outside the repository."""
        base = (self.metadata_dir if kind == "metadata" else self.targets_dir).resolve()
        if not rel or "\x00" in rel or rel.startswith("/") or any(p in ("..", "") for p in rel.split("/")):
            raise NotFoundError(f"no repository file {kind}/{rel}", hint="check the path")
        p = (base / rel).resolve()
        if not p.is_relative_to(base) or not p.is_file() or p.name.startswith("."):
            raise NotFoundError(f"no repository file {kind}/{rel}", hint="check the path")
        return p

    # --- timestamp -----------------------------------------------------------------------------

    def timestamp_expires(self) -> float | None:
        try:
            doc = json.loads((self.metadata_dir / "timestamp.json").read_bytes())
            return datetime.fromisoformat(doc["signed"]["expires"].replace("Z", "+00:00")).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _keystore(self) -> Any:
        with self._lock:
            if not self._keys_checked:
                self._keys_checked = True
                if self.keys_dir is not None and self.keys_dir.is_dir():
                    try:
                        from edgefleet.registry import KeyStore

                        ks = KeyStore(
                            self.keys_dir, passphrase=os.environ.get(KeyStore.PASSPHRASE_ENV) or None
                        )
                        if ks.can_sign("timestamp"):
                            self._keys = ks
                        else:
                            log.warning(
                                "no usable timestamp key in %s (missing, or encrypted without %s): "
                                "timestamp.json will not be refreshed",
                                self.keys_dir,
                                KeyStore.PASSPHRASE_ENV,
                            )
                    except Exception as e:  # the server still serves the repository without its keys
                        log.warning("cannot load online keys from %s: %s", self.keys_dir, e)
            return self._keys

    def can_refresh(self) -> bool:
        return self.exists and self._keystore() is not None

    def open(self, *, keys: bool = False) -> Any:
        if not self.exists:
            raise RegistryError(
                f"no TUF repository at {self.repo_dir}",
                hint="create one with `edgefleet registry init` and start the server with --repo",
            )
        from edgefleet.registry import Repository

        return Repository(self.repo_dir, self._keystore() if keys else None)

    def refresh_if_due(
        self, db: Database, *, now: float | None = None, force: bool = False
    ) -> dict[str, Any] | None:
        """Re-sign timestamp (and a pending snapshot) when due, once across all server processes.

        Returns:
            What was signed, or None when nothing was due (or another process holds the lock).
        """
        if not self.can_refresh():
            return None
        now = time.time() if now is None else now
        with db.write() as s:
            if not db.try_lock(s, LOCK):
                return None
            expires = self.timestamp_expires()
            repo = self.open(keys=True)
            pending = bool(repo.status().get("pending"))
            due = force or pending or expires is None or expires - now <= self.margin_s
            if not due:
                return None
            res = repo.refresh_timestamp().to_dict()
            audit(
                s,
                "repository.timestamp_refreshed",
                actor="server",
                now=now,
                previous_expires=expires,
                pending_publish=pending,
                **res,
            )
            log.info(
                "timestamp.json re-signed: version %s, expires %s", res["timestamp_version"], res["expires"]
            )
            return res

    # --- releases ------------------------------------------------------------------------------

    def register(
        self, db: Database, spec: ReleaseRegister, *, actor: str, now: float
    ) -> tuple[dict[str, Any], bool]:
        """Register name+version from the published targets; returns (release, created).

        Registering again is idempotent and picks up variants published since.
        """
        repo = self.open()
        found = [b for b in repo.list_versions(spec.name) if b.version == spec.version]
        if not found:
            versions = sorted({b.version for b in repo.list_versions(spec.name)})
            raise NotFoundError(
                f"{spec.name} {spec.version} is not published in the repository",
                hint=(
                    f"published versions of {spec.name}: {', '.join(versions)}"
                    if versions
                    else f"publish it first: edgefleet publish BUNDLE.tar --repo {self.repo_dir}"
                ),
            )
        names = {b.variant for b in found}
        unknown = set(spec.device_classes or {}) - names
        if unknown:
            raise InputError(
                f"device_classes names variants that are not published: {', '.join(sorted(unknown))}",
                hint=f"published variants of {spec.name} {spec.version}: {', '.join(sorted(names))}",
            )
        pending = bool(repo.status().get("pending"))
        if pending and self.refresh_if_due(db, now=now, force=True) is None and not self.can_refresh():
            log.warning("%s %s is published but not yet in a signed snapshot", spec.name, spec.version)
        variants = []
        for b in found:
            m = repo.show(b.name, b.version, b.variant).manifest
            classes = (spec.device_classes or {}).get(b.variant)
            if not classes:
                tagged = (m.lineage.tags or {}).get("device_classes") if m is not None else None
                classes = [c for c in (tagged or "").split(",") if c] or default_device_classes(b.variant)
            variants.append(
                {
                    "variant": b.variant,
                    "target_path": b.target_path,
                    "length": b.length,
                    "sha256": b.sha256,
                    "device_classes": classes,
                    "runtime": m.runtime.model_dump(mode="json") if m is not None else {},
                    "budgets": m.budgets.model_dump(mode="json") if m is not None else {},
                }
            )
        with db.write() as s:
            rel = s.scalars(
                select(Release).where(Release.name == spec.name, Release.version == spec.version)
            ).one_or_none()
            created = rel is None
            if rel is None:
                rel = Release(name=spec.name, version=spec.version, registered_at=now, registered_by=actor)
                s.add(rel)
                s.flush()
            have = {
                v.variant: v
                for v in s.scalars(select(ReleaseVariant).where(ReleaseVariant.release_id == rel.id))
            }
            added = []
            for v in variants:
                old = have.get(v["variant"])
                if old is not None:
                    if (old.sha256, old.length, old.target_path) != (
                        v["sha256"],
                        v["length"],
                        v["target_path"],
                    ):
                        raise ConflictError(
                            f"{spec.name} {spec.version} variant {v['variant']} was registered with other bytes",
                            hint="published versions are immutable; publish a new version",
                        )
                    continue
                s.add(ReleaseVariant(release_id=rel.id, **v))
                added.append(v["variant"])
            if added:
                audit(
                    s,
                    "release.registered",
                    actor=actor,
                    now=now,
                    release=f"{spec.name} {spec.version}",
                    variants=added,
                    pending_publish=pending,
                )
            s.flush()
            out = release_dict(s, rel)
        return out, created

    def releases(self, db: Database, *, name: str | None = None) -> list[dict[str, Any]]:
        """Registered releases (of ``name``, if given), oldest first."""
        with db.read() as s:
            q = select(Release).order_by(Release.registered_at)
            if name:
                q = q.where(Release.name == name)
            return [release_dict(s, r) for r in s.scalars(q)]

    def release(self, db: Database, name: str, version: str) -> dict[str, Any]:
        """One registered release.

        Raises:
            NotFoundError: it is not registered.
        """
        with db.read() as s:
            r = s.scalars(
                select(Release).where(Release.name == name, Release.version == version)
            ).one_or_none()
            if r is None:
                raise NotFoundError(
                    f"release {name} {version} is not registered",
                    hint=f"register it: edgefleet release register {name} {version}",
                )
            return release_dict(s, r)

    def status(self) -> dict[str, Any]:
        """The repository's role versions and expiry, and whether this server can re-sign the timestamp."""
        return {
            **self.open().status(),
            "can_refresh": self.can_refresh(),
            "timestamp_expires": self.timestamp_expires(),
        }


def release_dict(s: Any, rel: Release) -> dict[str, Any]:
    variants = s.scalars(
        select(ReleaseVariant).where(ReleaseVariant.release_id == rel.id).order_by(ReleaseVariant.id)
    )
    return {
        "id": rel.id,
        "name": rel.name,
        "version": rel.version,
        "registered_at": rel.registered_at,
        "registered_by": rel.registered_by,
        "variants": [
            {
                "variant": v.variant,
                "target_path": v.target_path,
                "length": v.length,
                "sha256": v.sha256,
                "device_classes": v.device_classes,
                "runtime": v.runtime,
                "budgets": v.budgets,
            }
            for v in variants
        ],
    }
