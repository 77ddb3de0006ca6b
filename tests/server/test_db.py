"""Database: migrations on start, refusing a newer schema, WAL mode, models matching the migrations."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from edgefleet.errors import ConfigError, SchemaVersionError
from edgefleet.server import Database, ServerConfig, create_app
from edgefleet.server._db import schema_head


def test_start_migrates_an_empty_database_and_restart_is_a_no_op(tmp_path):
    cfg = ServerConfig(data_dir=tmp_path, engine_enabled=False)
    create_app(cfg)
    db = Database(cfg.database_url)
    assert db.current_revision() == schema_head()
    with db.engine.connect() as c:
        tables = set(sa.inspect(c).get_table_names())
        assert {"devices", "rollouts", "rollout_devices", "audit", "alembic_version"} <= tables
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    token = cfg.admin_token_path.read_text()
    create_app(cfg)  # a second start: nothing to migrate, the admin token is kept
    assert cfg.admin_token_path.read_text() == token


def test_a_database_from_a_newer_edgefleet_is_refused_untouched(tmp_path):
    cfg = ServerConfig(data_dir=tmp_path, engine_enabled=False)
    create_app(cfg)
    db = Database(cfg.database_url)
    with db.engine.begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
        before = c.exec_driver_sql("SELECT count(*) FROM operator_tokens").scalar()
    with pytest.raises(SchemaVersionError) as e:
        create_app(cfg)
    assert "newer edgefleet" in e.value.message and e.value.hint
    with db.engine.connect() as c:
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "9999_future"
        assert c.exec_driver_sql("SELECT count(*) FROM operator_tokens").scalar() == before


def test_models_and_migrations_agree(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from edgefleet.server._models import Base

    db = Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    db.upgrade()
    with db.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert diff == [], f"models differ from the migrations; add an Alembic revision: {diff}"


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite://", "not a url at all"])
def test_unsupported_database_urls_are_config_errors(url):
    with pytest.raises(ConfigError) as e:
        Database(url)
    assert e.value.hint


def test_cli_refuses_newer_schema_without_traceback(tmp_path):
    import subprocess
    import sys

    cfg = ServerConfig(data_dir=tmp_path, engine_enabled=False)
    create_app(cfg)
    with Database(cfg.database_url).engine.begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = 'zzzz'")
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "server", "migrate", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "newer edgefleet" in r.stderr and "Traceback" not in r.stderr
