"""What a repository publishes: bundle references and their target paths, and the records of published bundles.

Names and versions are checked here before they become target paths (the path convention itself is
``edgefleet.protocol._targets``); ``published_from`` reads the records back from the targets
metadata's custom fields.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edgefleet.errors import RegistryError
from edgefleet.protocol._targets import (
    SEMVER,
    SLUG,
    bundle_target_path,
    delta_target_path,
    edgefleet_custom,
    hashed_target_path,
)

if TYPE_CHECKING:
    from edgefleet.protocol import Manifest

__all__ = [
    "DeltaTarget",
    "PublishResult",
    "PublishedBundle",
    "delta_target_path_for",
    "next_patch",
    "published_from",
    "semver_key",
    "target_path_for",
    "utc_now",
]


# --- naming ----------------------------------------------------------------------------------


def _check_ref(name: str, version: str, variant: str) -> None:
    for label, value in (("name", name), ("variant", variant)):
        if not SLUG.match(value or ""):
            raise RegistryError(
                f"bundle {label} {value!r} is not valid",
                hint="use 1-64 lowercase letters, digits, '.', '_' or '-', starting alphanumeric",
            )
    if not SEMVER.match(version or ""):
        raise RegistryError(f"version {version!r} is not semver", hint="use MAJOR.MINOR.PATCH, e.g. 1.4.0")


def target_path_for(name: str, version: str, variant: str) -> str:
    """TUF target path of a bundle (``<name>/<version>/<variant>.tar``), once the names are checked."""
    _check_ref(name, version, variant)
    return bundle_target_path(name, version, variant)


def delta_target_path_for(name: str, version: str, variant: str, base_version: str) -> str:
    """TUF target path of the delta from ``base_version`` to ``version``, once the names are checked."""
    _check_ref(name, version, variant)
    _check_ref(name, base_version, variant)
    return delta_target_path(name, version, variant, base_version)


def semver_key(version: str) -> tuple[Any, ...]:
    """Sort key that orders versions the semver way (1.10.0 > 1.9.0, 1.0.0-rc.1 < 1.0.0)."""
    m = SEMVER.match(version)
    if not m:
        raise RegistryError(f"version {version!r} is not semver", hint="use MAJOR.MINOR.PATCH, e.g. 1.4.0")
    pre = m.group(4)
    pre_key: tuple[Any, ...] = (
        (1,)
        if pre is None
        else (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    )
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), pre_key)


def next_patch(version: str) -> str:
    m = SEMVER.match(version)
    return f"{m.group(1)}.{m.group(2)}.{int(m.group(3)) + 1}" if m else "a higher version"


def utc_now() -> datetime:
    """Now, in UTC to the second: the clock of metadata expiry and of publish times."""
    return datetime.now(UTC).replace(microsecond=0)


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaTarget:
    """A published delta that turns ``base_version`` of a bundle into this version."""

    target_path: str
    length: int
    sha256: str
    base_version: str
    base_target: str
    base_sha256: str
    url_path: str
    method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PublishedBundle:
    """One published name+version+variant, as the targets metadata records it."""

    name: str
    version: str
    variant: str
    target_path: str
    length: int
    sha256: str
    url_path: str
    manifest_sha256: str | None = None
    parent_version: str | None = None
    created: str | None = None
    published: str | None = None
    deltas: tuple[DeltaTarget, ...] = ()
    manifest: Manifest | None = None

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}/{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("manifest", "deltas")}
        d["deltas"] = [x.to_dict() for x in self.deltas]
        if self.manifest is not None:
            d["manifest"] = self.manifest.model_dump(mode="json")
        return d


@dataclass(frozen=True)
class PublishResult:
    """What ``Repository.publish`` did.

    ``unchanged`` is True when the same bytes were already published (nothing was written);
    ``pending`` is True when this machine has no snapshot/timestamp key, so devices see the new
    targets after the server's next ``refresh_timestamp``.
    """

    target_path: str
    length: int
    sha256: str
    delta_target_path: str | None = None
    delta_length: int | None = None
    name: str = ""
    version: str = ""
    variant: str = ""
    unchanged: bool = False
    pending: bool = False
    targets_version: int = 0
    deltas: tuple[DeltaTarget, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deltas"] = [x.to_dict() for x in self.deltas]
        return d


def published_from(targets: Any) -> dict[tuple[str, str, str], PublishedBundle]:
    """The published bundles (with their deltas) that a targets metadata lists, by (name, version, variant)."""
    bundles: dict[tuple[str, str, str], dict[str, Any]] = {}
    deltas: dict[tuple[str, str, str], list[DeltaTarget]] = defaultdict(list)
    for path, tf in targets.targets.items():
        ef = edgefleet_custom(tf)
        if not ef:
            continue
        ref = (ef.get("name"), ef.get("version"), ef.get("variant"))
        sha = tf.hashes.get("sha256", "")
        if ef.get("kind") == "bundle":
            bundles[ref] = {
                "name": ref[0],
                "version": ref[1],
                "variant": ref[2],
                "target_path": path,
                "length": tf.length,
                "sha256": sha,
                "url_path": hashed_target_path(path, sha),
                "manifest_sha256": ef.get("manifest_sha256"),
                "parent_version": ef.get("parent_version"),
                "created": ef.get("created"),
                "published": ef.get("published"),
            }
        elif ef.get("kind") == "delta":
            deltas[ref].append(
                DeltaTarget(
                    path,
                    tf.length,
                    sha,
                    ef.get("parent_version"),
                    ef.get("base_target"),
                    ef.get("base_sha256"),
                    hashed_target_path(path, sha),
                    ef.get("method"),
                )
            )
    return {
        ref: PublishedBundle(**b, deltas=tuple(sorted(deltas[ref], key=lambda d: semver_key(d.base_version))))
        for ref, b in bundles.items()
    }
