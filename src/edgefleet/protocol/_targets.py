"""Where a bundle lives in the image repository: its TUF target paths and the custom metadata signed with them.

The registry writes targets by these rules and the agent finds them by the same rules, so the
convention has this one home::

    <name>/<version>/<variant>.tar                        a bundle
    <name>/<version>/<variant>.from-<base>.delta          the delta from <base> to <version>
    <dir>/<sha256>.<file>                                 the file a consistent-snapshot client fetches

Each target's ``custom`` metadata carries edgefleet's facts about it under one key, ``edgefleet``
(kind ``bundle`` or ``delta``, name, version, variant, base and result hashes...).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "CUSTOM_KEY",
    "SEMVER",
    "SLUG",
    "bundle_target_path",
    "delta_target_path",
    "edgefleet_custom",
    "hashed_target_path",
    "target_custom_fields",
]

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
"""A semver version; groups: major, minor, patch, pre-release (or None)."""

SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
"""A bundle name or variant: 1-64 lowercase letters, digits, '.', '_' or '-', starting alphanumeric."""

CUSTOM_KEY = "edgefleet"
"""The key of edgefleet's facts in a target's ``custom`` metadata."""


def bundle_target_path(name: str, version: str, variant: str) -> str:
    """TUF target path of a bundle: ``<name>/<version>/<variant>.tar``."""
    return f"{name}/{version}/{variant}.tar"


def delta_target_path(name: str, version: str, variant: str, base_version: str) -> str:
    """TUF target path of the delta from ``base_version`` to ``version``."""
    return f"{name}/{version}/{variant}.from-{base_version}.delta"


def hashed_target_path(target_path: str, sha256: str) -> str:
    """The file name a consistent-snapshot repository stores ``target_path`` under (``dir/<sha256>.file``)."""
    dirname, _, basename = target_path.rpartition("/")
    return f"{dirname}/{sha256}.{basename}" if dirname else f"{sha256}.{basename}"


def target_custom_fields(facts: dict[str, Any]) -> dict[str, Any]:
    """The ``unrecognized_fields`` of a ``TargetFile`` that carries ``facts`` as edgefleet's custom metadata."""
    return {"custom": {CUSTOM_KEY: facts}}


def edgefleet_custom(target: Any) -> dict[str, Any]:
    """edgefleet's facts from a ``TargetFile``'s custom metadata; ``{}`` when it has none."""
    custom = getattr(target, "custom", None)
    facts = custom.get(CUSTOM_KEY) if isinstance(custom, dict) else None
    return facts if isinstance(facts, dict) else {}
