"""Helpers for registry tests: a python-tuf client with a persistent cache, directory snapshots, forging."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater

SCALE = [{"op": "scale", "factor": 1 / 16}]
CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def tree(path: Path, *, skip: tuple[str, ...] = (".edgefleet",)) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes; symlinks as their target), to compare before/after."""
    out: dict[str, bytes] = {}
    if not path.exists():
        return out
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if rel.split("/")[0] in skip:
            continue
        if p.is_symlink():
            out[rel] = b"-> " + str(p.readlink()).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def mirror(repo_dir: Path, served: Path) -> None:
    """Make ``served`` an exact copy of the repository's public files (what an HTTP mirror holds)."""
    if served.exists():
        shutil.rmtree(served)
    shutil.copytree(repo_dir, served, ignore=shutil.ignore_patterns(".edgefleet"))


@dataclass
class Client:
    """A device-like python-tuf client: pinned root bytes, a persistent metadata cache, a target dir."""

    home: Path
    url: str
    pinned_root: bytes

    @property
    def metadata_dir(self) -> Path:
        return self.home / "metadata"

    @property
    def target_dir(self) -> Path:
        return self.home / "targets"

    def updater(self) -> Updater:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.target_dir.mkdir(parents=True, exist_ok=True)
        return Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=f"{self.url}/metadata/",
            target_dir=str(self.target_dir),
            target_base_url=f"{self.url}/targets/",
            bootstrap=self.pinned_root,
        )

    def refresh(self) -> Updater:
        u = self.updater()
        u.refresh()
        return u

    def download(self, target_path: str) -> Path:
        u = self.refresh()
        info = u.get_targetinfo(target_path)
        assert info is not None, f"{target_path} not listed"
        return Path(u.download_target(info))

    def state(self) -> dict[str, bytes]:
        """Everything the client trusts or holds: cached metadata (root history too) and targets."""
        return tree(self.home)

    def trusted(self, role: str) -> Metadata:
        return Metadata.from_bytes((self.metadata_dir / f"{role}.json").read_bytes())


def load_md(path: Path) -> Metadata:
    return Metadata.from_bytes(path.read_bytes())


def sign_and_write(md: Metadata, signers: list[Any], path: Path, *, bump: bool = True) -> bytes:
    """Forge: bump version/expiry, sign with ``signers`` (whatever keys the attacker holds), write to ``path``."""
    if bump:
        md.signed.version += 1
        md.signed.expires = datetime.now(UTC) + timedelta(days=1)
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    data = md.to_bytes(JSONSerializer(compact=False))
    path.write_bytes(data)
    return data


def attacker_key() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()
