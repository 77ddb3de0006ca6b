"""SQLAlchemy 2 models of the control plane. Times are UNIX seconds (float), portable across databases.

Every schema change goes with an Alembic revision in ``migrations/versions``; a test checks that the
models and the migrations agree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "Device",
    "EnrollmentToken",
    "OperatorToken",
    "Release",
    "ReleaseVariant",
    "Rollout",
    "RolloutDevice",
    "AuditEntry",
    "TelemetryBatchRow",
    "TelemetryWindowRow",
    "ServerState",
]

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Device(Base):
    """One enrolled device, its last report and its running health counters for the active version.

    The ``h_*`` columns accumulate ``ModelHealth`` from heartbeats while the device runs the build
    ``h_key`` (its sha256); they reset when the active build changes. Keeping them on the device row
    makes a heartbeat a single UPDATE.
    """

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    enrollment_token_id: Mapped[str | None] = mapped_column(String(64))
    enrolled_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float, index=True)
    device_class: Mapped[str] = mapped_column(String(64), index=True)
    arch: Mapped[str] = mapped_column(String(64))
    hardware: Mapped[dict[str, Any]] = mapped_column(JSONType)
    tags: Mapped[dict[str, str]] = mapped_column(JSONType)

    active_name: Mapped[str | None] = mapped_column(String(64))
    active_version: Mapped[str | None] = mapped_column(String(64))
    active_variant: Mapped[str | None] = mapped_column(String(64))
    active_target: Mapped[str | None] = mapped_column(String(512))
    active_sha256: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    health: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    h_key: Mapped[str | None] = mapped_column(String(64))
    h_since: Mapped[float | None] = mapped_column(Float)
    h_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    h_errors: Mapped[int] = mapped_column(BigInteger, default=0)
    h_lat_sum: Mapped[float] = mapped_column(Float, default=0.0)
    h_lat_w: Mapped[float] = mapped_column(Float, default=0.0)
    h_conf_sum: Mapped[float] = mapped_column(Float, default=0.0)
    h_conf_w: Mapped[float] = mapped_column(Float, default=0.0)
    h_golden: Mapped[bool | None] = mapped_column(Boolean)
    h_shadow: Mapped[float | None] = mapped_column(Float)
    h_drift: Mapped[float | None] = mapped_column(Float)

    fail_version: Mapped[str | None] = mapped_column(String(64))
    fail_at: Mapped[float | None] = mapped_column(Float)
    fail_reason: Mapped[str | None] = mapped_column(Text)

    assigned_variant_id: Mapped[int | None] = mapped_column(ForeignKey("release_variants.id"))
    assigned_rollout_id: Mapped[str | None] = mapped_column(String(32))
    command: Mapped[str | None] = mapped_column(String(128))
    command_version: Mapped[str | None] = mapped_column(String(64))

    # The director's answers to this device are numbered: every heartbeat answer takes the next number
    # (0: the device never sent one, it is "pending"). Its certificate's expiry, when it enrolled with a CSR.
    director_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cert_expires: Mapped[float | None] = mapped_column(Float)


class EnrollmentToken(Base):
    """A one-time, expiring token that enrolls one device with the tags it is scoped to."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tags: Mapped[dict[str, str]] = mapped_column(JSONType)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(128))
    used_at: Mapped[float | None] = mapped_column(Float)
    used_by: Mapped[str | None] = mapped_column(String(64))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class OperatorToken(Base):
    __tablename__ = "operator_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(128))
    revoked_at: Mapped[float | None] = mapped_column(Float)


class Release(Base):
    """A model name+version registered from the image repository."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_release_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    registered_at: Mapped[float] = mapped_column(Float)
    registered_by: Mapped[str | None] = mapped_column(String(128))


class ReleaseVariant(Base):
    """One published bundle target of a release: a build for one hardware class. Immutable."""

    __tablename__ = "release_variants"
    __table_args__ = (UniqueConstraint("release_id", "variant", name="uq_variant_release_variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    variant: Mapped[str] = mapped_column(String(64))
    target_path: Mapped[str] = mapped_column(String(512), index=True)
    length: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    device_classes: Mapped[list[str]] = mapped_column(JSONType)
    runtime: Mapped[dict[str, Any]] = mapped_column(JSONType)
    budgets: Mapped[dict[str, Any]] = mapped_column(JSONType)


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    selector: Mapped[str] = mapped_column(String(1024))
    waves: Mapped[list[float]] = mapped_column(JSONType)
    soak_s: Mapped[list[float]] = mapped_column(JSONType)
    policy: Mapped[str] = mapped_column(String(16))
    on_fail: Mapped[str] = mapped_column(String(16))
    gates: Mapped[dict[str, Any]] = mapped_column(JSONType)
    device_gates: Mapped[dict[str, Any]] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(String(32), index=True)
    wave_index: Mapped[int] = mapped_column(Integer, default=0)
    wave_started_at: Mapped[float] = mapped_column(Float)
    paused_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(128))
    baseline: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    reason: Mapped[str | None] = mapped_column(Text)
    # a forced rollout (security fix) ignores update policies (``_update_policies``)
    force: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class RolloutDevice(Base):
    """A device's membership in a rollout: admitted in a wave, or recorded as not fitting."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    # admitted | does_not_fit | rolled_back | parked (its update policy pins another version or defers)
    status: Mapped[str] = mapped_column(String(16))
    wave: Mapped[int | None] = mapped_column(Integer)
    admitted_at: Mapped[float | None] = mapped_column(Float)
    variant_id: Mapped[int | None] = mapped_column(ForeignKey("release_variants.id"))
    prev_version: Mapped[str | None] = mapped_column(String(64))
    prev_variant_id: Mapped[int | None] = mapped_column(ForeignKey("release_variants.id"))
    reason: Mapped[str | None] = mapped_column(Text)


class AuditEntry(Base):
    """One transition or operator action, with the figures that caused it."""

    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_rollout", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    rollout_id: Mapped[str | None] = mapped_column(String(32))
    device_id: Mapped[str | None] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSONType)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape every audit listing (API, CLI, dashboard) uses."""
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "rollout_id": self.rollout_id,
            "device_id": self.device_id,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "details": self.details,
        }


class TelemetryBatchRow(Base):
    """An accepted telemetry upload; the raw body lives in the blob store under ``blob_sha256``."""

    __tablename__ = "telemetry_batches"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    received_at: Mapped[float] = mapped_column(Float)
    windows: Mapped[int] = mapped_column(Integer)
    blob_sha256: Mapped[str] = mapped_column(String(64))


class TelemetryWindowRow(Base):
    __tablename__ = "telemetry_windows"
    __table_args__ = (Index("ix_telemetry_windows_device", "device_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    batch_id: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[float] = mapped_column(Float)
    start: Mapped[float | None] = mapped_column(Float)
    end: Mapped[float | None] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)


class ServerState(Base):
    """Small named values shared by all server processes (lock rows on SQLite, refresh bookkeeping)."""

    __tablename__ = "server_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSONType)
    updated_at: Mapped[float] = mapped_column(Float)
