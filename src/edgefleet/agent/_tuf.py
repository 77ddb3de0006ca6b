"""TUF verification of the image repository, and the Uptane-style agreement with the director."""

from __future__ import annotations

import logging
from pathlib import Path

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from edgefleet.agent._fetcher import HttpxFetcher
from edgefleet.errors import DownloadError, VerificationError
from edgefleet.protocol import Assignment
from edgefleet.protocol._targets import hashed_target_path

__all__ = ["TrustedRepository"]

log = logging.getLogger(__name__)


class TrustedRepository:
    """Refreshes and verifies TUF metadata of the image repository with a pinned root.

    Args:
        metadata_dir: where verified metadata is kept between runs (rollback protection).
        repository_url: base URL holding ``metadata/`` and ``targets/``.
        root: bytes of the root.json pinned at enrollment (the trust anchor).
        fetcher: the network seam shared with target downloads.
    """

    def __init__(
        self,
        metadata_dir: Path,
        repository_url: str,
        root: bytes,
        fetcher: HttpxFetcher,
        *,
        max_metadata_bytes: int = 8 << 20,
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.base = repository_url if repository_url.endswith("/") else repository_url + "/"
        self.root = root
        self.fetcher = fetcher
        self._cfg = UpdaterConfig(
            snapshot_max_length=max_metadata_bytes, targets_max_length=max_metadata_bytes
        )
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Download and verify timestamp, snapshot and targets (signatures, expiry, versions).

        Raises:
            VerificationError: metadata failed verification (bad signature, expired, rolled back, ...).
            DownloadError: the repository could not be reached.
        """
        try:
            up = Updater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=self.base + "metadata/",
                target_base_url=self.base + "targets/",
                fetcher=self.fetcher,
                config=self._cfg,
                bootstrap=self.root,
            )
            up.refresh()
        except tuf_exc.RepositoryError as e:
            raise VerificationError(
                f"image repository metadata failed verification: {type(e).__name__}: {e}",
                hint="the repository is stale, tampered or misconfigured; the active model stays",
                reason=type(e).__name__,
            ) from e
        except tuf_exc.DownloadError as e:
            raise DownloadError(
                f"cannot fetch repository metadata from {self.base}: {e}",
                hint="the repository is unreachable; the agent retries later",
            ) from e
        self._updater = up

    def target(self, path: str) -> TargetFile:
        """Signed target info for ``path``; refreshes first if needed.

        Raises:
            VerificationError: the signed targets metadata does not list ``path``.
        """
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        try:
            info = self._updater.get_targetinfo(path)
        except tuf_exc.RepositoryError as e:
            raise VerificationError(
                f"targets metadata failed verification: {e}", reason=type(e).__name__
            ) from e
        except tuf_exc.DownloadError as e:
            raise DownloadError(f"cannot fetch delegated metadata: {e}") from e
        if info is None:
            raise VerificationError(
                f"target {path} is not in the signed targets metadata",
                hint="the director assigned something the publisher never signed; it was refused",
                reason="not_signed",
                target=path,
            )
        return info

    def find(self, path: str) -> TargetFile | None:
        try:
            return self.target(path)
        except VerificationError:
            return None

    def check_assignment(self, a: Assignment) -> TargetFile:
        """The signed target for an assignment, after checking director and repository agree on it.

        Raises:
            VerificationError: not signed, or length/hashes differ between director and metadata.
        """
        self.refresh()  # always against the newest signed state (and its expiry)
        info = self.target(a.target_path)
        if info.length != a.length:
            raise VerificationError(
                f"director says {a.target_path} is {a.length} bytes, signed metadata says {info.length}",
                hint="director and image repository disagree; the assignment was refused",
                reason="length_mismatch",
            )
        shared = set(info.hashes) & set(a.hashes)
        if "sha256" not in shared:
            raise VerificationError(
                f"assignment for {a.target_path} has no sha256 that the signed metadata also has",
                reason="hash_missing",
            )
        for alg in shared:
            if info.hashes[alg].lower() != a.hashes[alg].lower():
                raise VerificationError(
                    f"director's {alg} for {a.target_path} differs from the signed metadata",
                    hint="director and image repository disagree; the assignment was refused",
                    reason="hash_mismatch",
                )
        return info

    def url(self, info: TargetFile) -> str:
        """Download URL of a target (hash-prefixed file name under consistent snapshots)."""
        path = info.path
        if self._consistent_snapshot():
            path = hashed_target_path(path, info.hashes["sha256"])
        return f"{self.base}targets/{path}"

    def verify_file(self, info: TargetFile, path: Path) -> None:
        """Check a downloaded file against the signed length and hashes.

        Raises:
            VerificationError: the file is not what the metadata signed.
        """
        try:
            with open(path, "rb") as f:
                info.verify_length_and_hashes(f)
        except tuf_exc.LengthOrHashMismatchError as e:
            raise VerificationError(
                f"downloaded {info.path} does not match its signed hashes: {e}",
                hint="corrupted in transit or tampered; it was discarded",
                reason="hash_mismatch",
            ) from e

    def _consistent_snapshot(self) -> bool:
        try:
            md = Metadata[Root].from_file(str(self.metadata_dir / "root.json"))
            return bool(md.signed.consistent_snapshot)
        except Exception:  # pragma: no cover - refresh() wrote it
            return True
