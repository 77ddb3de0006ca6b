"""Simulator fixtures: a TUF repository with three real digits releases, a server in this process."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

SCALE = [{"op": "scale", "factor": 1 / 16}]


@pytest.fixture(scope="session")
def sim_repo(tmp_path_factory, digits_mlp, digits_mlp_v2, digits_split) -> Path:
    """digits 1.0.0, 1.1.0 and 2.0.0 (variant cpu) published in a fresh repository; returns its directory."""
    from edgefleet.bundle import create_bundle
    from edgefleet.registry import Repository, init_keys

    base = tmp_path_factory.mktemp("simrepo")
    repo = Repository.init(base / "repo", init_keys(base / "keys", root_keys=1, root_threshold=1))
    x = digits_split.x_test[:8]
    for version, model in (("1.0.0", digits_mlp), ("1.1.0", digits_mlp_v2), ("2.0.0", digits_mlp)):
        out = create_bundle(
            model,
            base / f"{version}.tar",
            name="digits",
            version=version,
            variant="cpu",
            inputs_raw=x,
            preprocess=SCALE,
            created=datetime(2025, 1, 2, tzinfo=UTC),
        )
        repo.publish(out, delta=False)
    return base / "repo"


@pytest.fixture
def sim_server(tmp_path, sim_repo):
    from edgefleet.server import ServerConfig, start_server

    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=sim_repo,
        keys_dir=tmp_path / "nokeys",
        engine_tick_s=0.1,
        poll_interval_s=0.5,
    )
    with start_server(cfg) as srv:
        yield srv


@pytest.fixture
def pg_schema_url(postgres_url):
    """A PostgreSQL URL whose search_path is a fresh schema of its own (dropped afterwards)."""
    import secrets

    import sqlalchemy as sa

    schema = "ef_sim_" + secrets.token_hex(4)
    eng = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    with eng.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    with eng.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    eng.dispose()
