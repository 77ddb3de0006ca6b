"""Publishing a bundle archive: its copy, checks, deltas from earlier versions, and the signed targets.

Crash-safe order (see ``registry._repository``): the target files are installed first, then the new
targets metadata (the publish is durable), then snapshot and timestamp when this machine holds the
online keys (else the server's next ``refresh_timestamp`` makes it visible). ``Repository.publish``
delegates here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuf.api.metadata import TargetFile

from edgefleet._fs import copy_hashed, file_sha256
from edgefleet.errors import BundleError, RegistryError, VersionExistsError
from edgefleet.protocol._targets import hashed_target_path, target_custom_fields
from edgefleet.registry._fs import install
from edgefleet.registry._published import (
    DeltaTarget,
    PublishResult,
    delta_target_path_for,
    next_patch,
    published_from,
    semver_key,
    target_path_for,
    utc_now,
)

if TYPE_CHECKING:
    from edgefleet.protocol import Manifest
    from edgefleet.registry._repository import Repository

__all__ = ["check_bundle", "publish"]

log = logging.getLogger(__name__)


@dataclass
class _NewTarget:
    path: str
    tmp: Path
    length: int
    sha256: str
    custom: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def publish(repo: Repository, archive: str | os.PathLike[str], *, delta: bool = True) -> PublishResult:
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
    src = Path(archive)
    if not src.is_file():
        raise BundleError(
            f"bundle archive {src} does not exist", hint="pass the .tar that bundle create wrote"
        )
    size = src.stat().st_size
    if size > repo.config.max_bundle_bytes:
        raise RegistryError(
            f"{src} is {size} bytes, above the {repo.config.max_bundle_bytes} allowed",
            hint="raise EDGEFLEET_REGISTRY_MAX_BUNDLE_BYTES if this is intended",
        )
    repo._signers_for("targets")  # fail before copying anything
    with repo._locked():
        # Work on our own copy so the manifest we read and the bytes we sign are the same.
        tmp = repo._tmp_dir / "bundle.tar"
        repo._verify_state()
        length, sha = copy_hashed(src, tmp)
        manifest = check_bundle(repo, tmp)
        tpath = target_path_for(manifest.name, manifest.version, manifest.variant)
        targets = repo.targets()
        existing = targets.targets.get(tpath)
        if existing is not None:
            if existing.length == length and existing.hashes.get("sha256") == sha:
                log.info("%s is already published with the same bytes; nothing changed", tpath)
                pub = published_from(targets).get((manifest.name, manifest.version, manifest.variant))
                deltas = pub.deltas if pub else ()
                return PublishResult(
                    tpath,
                    length,
                    sha,
                    deltas[0].target_path if deltas else None,
                    deltas[0].length if deltas else None,
                    manifest.name,
                    manifest.version,
                    manifest.variant,
                    unchanged=True,
                    pending=repo._pending(),
                    targets_version=targets.version,
                    deltas=deltas,
                )
            raise VersionExistsError(
                f"{tpath} is already published with different content "
                f"(sha256 {existing.hashes.get('sha256', '?')[:12]}…, new {sha[:12]}…)",
                hint="published versions are immutable; bump the version (e.g. "
                f"{next_patch(manifest.version)}) and rebuild the bundle",
                target=tpath,
            )
        manifest_sha = hashlib.sha256(manifest.to_json()).hexdigest()
        published = utc_now().isoformat()
        new = [
            _NewTarget(
                tpath,
                tmp,
                length,
                sha,
                {
                    "kind": "bundle",
                    "name": manifest.name,
                    "version": manifest.version,
                    "variant": manifest.variant,
                    "parent_version": manifest.lineage.parent_version,
                    "base_target": None,
                    "base_sha256": None,
                    "result_sha256": None,
                    "result_length": None,
                    "manifest_sha256": manifest_sha,
                    "created": manifest.created.isoformat(),
                    "published": published,
                },
            )
        ]
        if delta and repo.config.delta:
            new += _make_deltas(repo, targets, manifest, tmp, length, sha, manifest_sha, published)
        for t in new:
            install(t.tmp, repo.targets_dir / hashed_target_path(t.path, t.sha256))
        with repo.edit_targets() as tmd:
            for t in new:
                tmd.targets[t.path] = TargetFile(
                    t.length, {"sha256": t.sha256}, t.path, target_custom_fields(t.custom)
                )
        pending = not _publish_online(repo)
        deltas = tuple(
            DeltaTarget(
                t.path,
                t.length,
                t.sha256,
                t.custom["parent_version"],
                t.custom["base_target"],
                t.custom["base_sha256"],
                hashed_target_path(t.path, t.sha256),
                t.custom.get("method"),
            )
            for t in new[1:]
        )
        log.info(
            "published %s (%d bytes, %d delta%s)%s",
            tpath,
            length,
            len(deltas),
            "" if len(deltas) == 1 else "s",
            "; waiting for the server to sign snapshot/timestamp" if pending else "",
        )
        return PublishResult(
            tpath,
            length,
            sha,
            deltas[0].target_path if deltas else None,
            deltas[0].length if deltas else None,
            manifest.name,
            manifest.version,
            manifest.variant,
            pending=pending,
            targets_version=tmd.version,
            deltas=deltas,
        )


def check_bundle(repo: Repository, archive: Path) -> Manifest:
    """Refuse to sign a bundle that does not verify (truncated after the manifest, tampered files...)."""
    from edgefleet.bundle import Bundle, read_manifest

    mode = repo.config.verify_on_publish
    if mode == "none":
        return read_manifest(archive)
    with Bundle.open(archive, extract_to=repo._tmp_dir / "check") as b:
        if mode == "golden":
            b.verify()
        return b.manifest


def _make_deltas(
    repo: Repository,
    targets: Any,
    manifest: Manifest,
    new_tmp: Path,
    length: int,
    sha: str,
    manifest_sha: str,
    published: str,
) -> list[_NewTarget]:
    from edgefleet.bundle import make_delta

    mine = semver_key(manifest.version)
    earlier = sorted(
        (
            p
            for p in published_from(targets).values()
            if p.name == manifest.name and p.variant == manifest.variant and semver_key(p.version) < mine
        ),
        key=lambda p: semver_key(p.version),
        reverse=True,
    )[: repo.config.delta_bases]
    out: list[_NewTarget] = []
    for base in earlier:
        base_file = repo.targets_dir / base.url_path
        patch = repo._tmp_dir / f"from-{base.version}.delta"
        try:
            info = make_delta(base_file, new_tmp, patch, method=repo.config.delta_method)
        except (BundleError, OSError) as e:
            # A missing delta only costs bandwidth: devices fall back to the full bundle.
            log.warning("no delta from %s to %s: %s", base.version, manifest.version, e)
            patch.unlink(missing_ok=True)
            continue
        d_len, d_sha = file_sha256(patch)
        if d_len > repo.config.delta_max_ratio * length:
            log.info(
                "delta from %s is %d bytes (%.0f%% of the bundle); not publishing it",
                base.version,
                d_len,
                100 * d_len / max(length, 1),
            )
            patch.unlink()
            continue
        method = getattr(info, "method", None) or (info.get("method") if isinstance(info, dict) else None)
        out.append(
            _NewTarget(
                delta_target_path_for(manifest.name, manifest.version, manifest.variant, base.version),
                patch,
                d_len,
                d_sha,
                {
                    "kind": "delta",
                    "name": manifest.name,
                    "version": manifest.version,
                    "variant": manifest.variant,
                    "parent_version": base.version,
                    "base_target": base.target_path,
                    "base_sha256": base.sha256,
                    "result_sha256": sha,
                    "result_length": length,
                    "manifest_sha256": manifest_sha,
                    "method": str(method) if method else None,
                    "published": published,
                },
            )
        )
    return out


def _publish_online(repo: Repository) -> bool:
    """Sign snapshot and timestamp when this machine holds the online keys; False if it does not."""
    if not (repo._can_sign("snapshot") and repo._can_sign("timestamp")):
        return False
    repo.do_snapshot()
    repo.do_timestamp()
    return True
