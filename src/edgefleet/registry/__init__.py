"""The TUF-signed image repository devices trust (see DESIGN.md, "Trust model").

Keys: ``init_keys`` writes root (N keys, threshold), targets (the publisher's), snapshot and
timestamp (online, on the server) keys as 0600 PEM files, root and targets optionally encrypted with
a passphrase, root keys optionally one per folder (USB sticks). ``Repository`` is a python-tuf
repository on disk that any static HTTP server can serve; ``publish`` adds a bundle and deltas from
earlier versions as signed targets, ``refresh_timestamp`` re-signs the short-lived timestamp,
``rotate_key`` replaces a key through a new root.
"""

from __future__ import annotations

from edgefleet.registry._client import RepositoryServer, fetch_bundle
from edgefleet.registry._config import RegistryConfig
from edgefleet.registry._keys import KeyInfo, KeyStore, init_keys
from edgefleet.registry._published import DeltaTarget, PublishedBundle, PublishResult
from edgefleet.registry._repository import RefreshResult, Repository
from edgefleet.registry._rotation import RotationResult

__all__ = [
    "DeltaTarget",
    "KeyInfo",
    "KeyStore",
    "PublishResult",
    "PublishedBundle",
    "RefreshResult",
    "RegistryConfig",
    "Repository",
    "RepositoryServer",
    "RotationResult",
    "fetch_bundle",
    "init_keys",
]
