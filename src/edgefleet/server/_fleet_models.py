"""Tables of fleet observability: downsampled telemetry, alerts and retraining requests.

They live on the control plane's declarative ``Base`` (one schema, one Alembic history); the revision that
creates them is ``migrations/versions/0002_fleet_observability.py``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.server._models import Base, JSONType

__all__ = ["FleetAlert", "RetrainRequestRow", "TelemetryRollup"]


class TelemetryRollup(Base):
    """Windows of one device, release and reference merged over one time bucket (e.g. an hour).

    Raw windows older than the raw retention are merged into these rows and deleted in the same
    transaction, so a window is counted either raw or rolled up, never both.
    """

    __tablename__ = "telemetry_rollups"
    __table_args__ = (
        UniqueConstraint(
            "device_id",
            "release",
            "reference_id",
            "resolution_s",
            "bucket",
            name="uq_telemetry_rollup_bucket",
        ),
        Index("ix_telemetry_rollups_bucket", "bucket"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    release: Mapped[str] = mapped_column(String(160))  # "name@version", or "-" when unknown
    reference_id: Mapped[str] = mapped_column(String(16))  # the feature histograms' reference, or "-"
    resolution_s: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[float] = mapped_column(Float)  # start of the bucket (multiple of resolution_s)
    start: Mapped[float] = mapped_column(Float)  # earliest window start merged in
    end: Mapped[float] = mapped_column(Float)  # latest window end merged in
    windows: Mapped[int] = mapped_column(Integer)  # raw windows merged in
    updated_at: Mapped[float] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)  # Window.to_dict() of the merge


class FleetAlert(Base):
    """One alert condition (drift, outlier, silent device, error rate), open while it is observed.

    ``key`` names the condition (``drift:digits@1.0.0/cpu/eu``); at most one open row per key.
    ``evaluations`` counts the consecutive evaluations that saw it (the retraining trigger's streak).
    """

    __tablename__ = "fleet_alerts"
    __table_args__ = (Index("ix_fleet_alerts_key_state", "key", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(256))
    rule: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)  # open | resolved
    message: Mapped[str] = mapped_column(Text)
    subject: Mapped[dict[str, Any]] = mapped_column(JSONType)
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType)
    first_at: Mapped[float] = mapped_column(Float)
    last_at: Mapped[float] = mapped_column(Float)
    resolved_at: Mapped[float | None] = mapped_column(Float)
    evaluations: Mapped[int] = mapped_column(Integer, default=1)


class RetrainRequestRow(Base):
    """A proposal to retrain a model, made from a sustained drift alert; fired once approved."""

    __tablename__ = "retrain_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    model: Mapped[str] = mapped_column(String(64))
    alert_key: Mapped[str] = mapped_column(String(256), index=True)
    reason: Mapped[str] = mapped_column(Text)
    subject: Mapped[dict[str, Any]] = mapped_column(JSONType)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending|approved|rejected|fired|failed
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[float | None] = mapped_column(Float)
    fired_at: Mapped[float | None] = mapped_column(Float)
    hook: Mapped[str | None] = mapped_column(String(512))
    error: Mapped[str | None] = mapped_column(Text)
