"""Control-plane settings: storage, polling, limits, background work (env prefix ``EDGEFLEET_SERVER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServerConfig"]


class ServerConfig(BaseSettings):
    """Everything the control plane needs to start; every limit has a documented default.

    Paths left ``None`` are derived from ``data_dir`` (see the ``*_path`` properties), so a server
    runs on embedded defaults with nothing but a directory.
    """

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_SERVER_", extra="ignore")

    data_dir: Path = Field(Path("edgefleet-server"), description="state directory (SQLite, blobs, tokens)")
    db_url: str | None = Field(
        None, description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default SQLite in data_dir"
    )
    repo_dir: Path | None = Field(
        None, description="TUF image repository to serve; default data_dir/repository"
    )
    keys_dir: Path | None = Field(
        None, description="online keys (snapshot, timestamp); default data_dir/keys"
    )
    blob_dir: Path | None = Field(None, description="content-addressed blob store; default data_dir/blobs")
    blob_url: str | None = Field(
        None,
        description="s3://bucket/prefix: keep blobs in an S3-compatible bucket instead of blob_dir (needs the "
        "s3 extra; credentials from the AWS_* environment variables or boto3's other sources)",
    )
    blob_s3_endpoint_url: str | None = Field(
        None, description="endpoint of the S3-compatible service (MinIO, Ceph...); default AWS"
    )
    blob_s3_region: str | None = Field(None, description="region of the bucket; default boto3's")
    blob_max_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="largest blob the S3 store reads back (bounded reads)"
    )
    repository_url: str | None = Field(
        None, description="repository base URL sent to devices; default this server's /repository/"
    )
    admin_token_file: Path | None = Field(
        None, description="where the first admin token is written (0600); default data_dir/admin-token"
    )
    bootstrap_admin: bool = Field(True, description="create an admin token on first start when none exists")

    tls_cert: Path | None = Field(None, description="PEM server certificate: serve HTTPS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM key of tls_cert (keep it 0600)")
    ca_dir: Path | None = Field(
        None,
        description="CA that signs device certificates and verifies them (mutual TLS); default data_dir/ca, "
        "created at first start when TLS is on",
    )
    device_cert_days: float = Field(30.0, gt=0, le=3650, description="lifetime of device certificates")
    device_auth: Literal["either", "mtls", "token"] = Field(
        "either",
        description="how devices authenticate: a client certificate or the bearer device token (either: "
        "tokens stay as a fallback behind a TLS-terminating proxy), certificates only, or tokens only",
    )
    director_key_file: Path | None = Field(
        None,
        description="Ed25519 key that signs the director's answers (0600); default data_dir/director.key",
    )

    poll_interval_s: float = Field(60.0, gt=0, description="how often devices should send a heartbeat")
    poll_jitter: float = Field(0.1, ge=0, lt=1, description="+/- fraction of jitter added to the advice")
    heartbeat_batch_max: int = Field(
        256,
        ge=0,
        description="PostgreSQL: most heartbeats written in one pipelined round trip (0: each on its own)",
    )
    stale_after_s: float = Field(180.0, gt=0, description="a device not seen for this long is 'stale'")
    offline_after_s: float = Field(600.0, gt=0, description="a device not seen for this long is 'offline'")

    enrollment_token_ttl_s: float = Field(86400.0, gt=0, description="default lifetime of enrollment tokens")
    enrollment_token_max_ttl_s: float = Field(30 * 86400.0, gt=0, description="longest lifetime allowed")

    max_body_bytes: int = Field(256 * 1024, gt=0, description="largest request body (except telemetry)")
    max_telemetry_bytes: int = Field(4 * 1024 * 1024, gt=0, description="largest telemetry batch body")
    max_windows_per_device: int = Field(
        10_000, gt=0, description="telemetry windows kept per device; older ones are deleted"
    )
    page_limit: int = Field(1000, gt=0, description="largest page a list endpoint returns")

    engine_enabled: bool = Field(True, description="run the rollout engine and timestamp refresh loop")
    engine_tick_s: float = Field(1.0, gt=0, description="seconds between rollout engine ticks")
    timestamp_check_s: float = Field(60.0, gt=0, description="seconds between timestamp freshness checks")
    timestamp_refresh_margin_s: float = Field(
        6 * 3600.0, ge=0, description="re-sign timestamp.json when it expires sooner than this"
    )

    mqtt_url: str | None = Field(None, description="mqtt://host:port of a broker for nudges; none = polling")
    mqtt_topic_prefix: str = Field("edgefleet", description="first level of every nudge topic")
    mqtt_max_queue: int = Field(10_000, gt=0, description="nudges queued while the broker is unreachable")
    nudge_rate_per_s: float = Field(
        100.0,
        ge=0,
        description="nudged devices are asked to poll within n / this many seconds (at most poll_interval_s) "
        "at a random moment, so a wave's n nudges do not come back as one burst; 0: all at once",
    )

    db_pool_size: int = Field(10, gt=0, description="connections per server process (PostgreSQL)")
    db_connect_timeout_s: float = Field(5.0, gt=0, description="PostgreSQL connect timeout")
    sqlite_busy_timeout_ms: int = Field(10_000, gt=0, description="how long SQLite waits for a write lock")

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'edgefleet.sqlite').resolve()}"

    @property
    def repo_path(self) -> Path:
        return self.repo_dir or self.data_dir / "repository"

    @property
    def keys_path(self) -> Path:
        return self.keys_dir or self.data_dir / "keys"

    @property
    def blob_path(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def ca_path(self) -> Path:
        return self.ca_dir or self.data_dir / "ca"

    @property
    def director_key_path(self) -> Path:
        return self.director_key_file or self.data_dir / "director.key"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def admin_token_path(self) -> Path:
        return self.admin_token_file or self.data_dir / "admin-token"
