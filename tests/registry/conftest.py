"""Registry fixtures: real bundles of the digits MLP, fresh keys, a repository, a served mirror."""

from __future__ import annotations

from pathlib import Path

import pytest
from registrytools import CREATED, SCALE, Client, mirror


def _bundle(model: Path, out: Path, version: str, x, variant: str = "cpu") -> Path:
    from edgefleet.bundle import create_bundle

    return create_bundle(
        model,
        out,
        name="digits",
        version=version,
        variant=variant,
        inputs_raw=x,
        preprocess=SCALE,
        created=CREATED,
    )


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split) -> dict[str, Path]:
    """Real bundle archives: digits 1.0.0, 1.1.0 (retrained), 2.0.0; and a different 1.0.0 (other bytes)."""
    d = tmp_path_factory.mktemp("bundles")
    x = digits_split.x_test[:16]
    return {
        "v1": _bundle(digits_mlp, d / "digits-1.0.0.tar", "1.0.0", x),
        "v2": _bundle(digits_mlp_v2, d / "digits-1.1.0.tar", "1.1.0", x),
        "v3": _bundle(digits_mlp, d / "digits-2.0.0.tar", "2.0.0", x),
        "v1_other": _bundle(digits_mlp_v2, d / "digits-1.0.0-other.tar", "1.0.0", x),
        "v1_gpu": _bundle(digits_mlp, d / "digits-1.0.0-gpu.tar", "1.0.0", x, variant="gpu"),
    }


@pytest.fixture
def keys(tmp_path):
    from edgefleet.registry import init_keys

    return init_keys(tmp_path / "keys")


@pytest.fixture
def repo(tmp_path, keys):
    from edgefleet.registry import Repository

    return Repository.init(tmp_path / "repo", keys)


class World:
    """A repository, an HTTP mirror of it on 127.0.0.1, and a client that trusts root v1."""

    def __init__(self, tmp_path: Path, repo, server) -> None:
        self.tmp = tmp_path
        self.repo = repo
        self.keys = repo.keys
        self.served = Path(server.directory)
        self.server = server
        self.root_v1 = (repo.metadata_dir / "1.root.json").read_bytes()
        self.client = Client(tmp_path / "device", server.url, self.root_v1)

    def sync(self) -> None:
        """The mirror catches up with the repository."""
        mirror(self.repo.repo_dir, self.served)

    def new_client(self, name: str) -> Client:
        return Client(self.tmp / name, self.server.url, self.root_v1)

    def signer(self, role: str):
        return self.keys.signers(role)[0]


@pytest.fixture
def world(tmp_path, repo, bundles):
    """v1 and v2 published and mirrored; the device client has refreshed and downloaded v2."""
    from edgefleet.registry import RepositoryServer

    repo.publish(bundles["v1"])
    repo.publish(bundles["v2"])
    served = tmp_path / "served"
    mirror(repo.repo_dir, served)
    with RepositoryServer(served) as server:
        w = World(tmp_path, repo, server)
        w.client.download("digits/1.1.0/cpu.tar")
        yield w
