"""Server fixtures: a real TUF repository with real digits bundles, apps on SQLite or PostgreSQL, a harness."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest
from servertools import Harness, make_harness

SCALE = [{"op": "scale", "factor": 1 / 16}]


def _bundle(model: Path, out: Path, version: str, variant: str, x, runtime=None) -> Path:
    from datetime import UTC, datetime

    from edgefleet.bundle import create_bundle

    return create_bundle(
        model,
        out,
        name="digits",
        version=version,
        variant=variant,
        inputs_raw=x,
        preprocess=SCALE,
        runtime=runtime,
        created=datetime(2025, 1, 2, tzinfo=UTC),
    )


@pytest.fixture(scope="session")
def published(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split) -> Path:
    """A TUF repository (and its keys) with digits 1.0.0 (cpu), 1.1.0 (cpu) and 2.0.0 (cpu + pi4).

    The pi4 variant of 2.0.0 needs 2048 MB RAM, onnxruntime >=1.17 and the neon CPU flag.
    Returns the directory holding ``repo/`` and ``keys/``; copy it before writing to it.
    """
    from edgefleet.protocol import RuntimeRequirements
    from edgefleet.registry import Repository, init_keys

    base = tmp_path_factory.mktemp("published")
    keys = init_keys(base / "keys", root_keys=1, root_threshold=1)
    repo = Repository.init(base / "repo", keys)
    x = digits_split.x_test[:8]
    b = base / "bundles"
    b.mkdir()
    pi4 = RuntimeRequirements(onnxruntime=">=1.17", min_ram_mb=2048, isa_flags=["neon"])
    for path in [
        _bundle(digits_mlp, b / "v1.tar", "1.0.0", "cpu", x),
        _bundle(digits_mlp_v2, b / "v11.tar", "1.1.0", "cpu", x),
        _bundle(digits_mlp, b / "v2.tar", "2.0.0", "cpu", x),
        _bundle(digits_mlp_v2, b / "v2pi.tar", "2.0.0", "pi4", x, runtime=pi4),
    ]:
        repo.publish(path, delta=False)
    return base


@pytest.fixture
def repo_copy(tmp_path, published) -> Path:
    """A private copy of the published repository and keys (for tests that sign)."""
    dst = tmp_path / "published"
    shutil.copytree(published, dst, ignore=shutil.ignore_patterns("bundles"))
    return dst


@pytest.fixture
def harness(tmp_path, published):
    """An app on SQLite serving the published repository, with a settable clock and no background thread."""
    client, clock = make_harness(tmp_path, repo_dir=published / "repo")
    with client:
        yield Harness(client, clock)


@pytest.fixture
def pg_url(postgres_url):
    """A PostgreSQL URL whose search_path is a fresh, empty schema of its own (dropped afterwards)."""
    import sqlalchemy as sa

    schema = "ef_t_" + secrets.token_hex(4)
    # no pool: a test may restart PostgreSQL, and teardown needs a fresh connection
    eng = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    with eng.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    eng.dispose()
