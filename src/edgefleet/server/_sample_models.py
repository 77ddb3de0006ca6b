"""Tables of the data loop (issue 13): sampled inputs sent by devices, their labels, and sample policies.

They live on the control plane's declarative ``Base``; the revision that creates them is
``migrations/versions/0005_samples.py``. Payload bytes (a sampled image, audio clip or tensor) are not in
the database: ``blob_sha256`` names them in the server's ``BlobStore``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.server._models import Base, JSONType

__all__ = ["SampleRow", "SamplePolicyRow"]


class SampleRow(Base):
    """One sampled request of one device: what the model answered, and (once known) the true label.

    ``request_id`` is the id the device gave the request; feedback (``POST /v1/feedback``) refers to it.
    ``release`` is ``model@version``; ``region`` is copied from the device's tags at upload time so that
    accuracy per region survives a device being re-tagged or deleted.
    """

    __tablename__ = "samples"
    __table_args__ = (
        Index("ix_samples_release_received", "release", "received_at"),
        Index("ix_samples_device_received", "device_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    release: Mapped[str] = mapped_column(String(160))  # "name@version", or "-" when unknown
    variant: Mapped[str | None] = mapped_column(String(64))
    device_class: Mapped[str | None] = mapped_column(String(64))
    region: Mapped[str | None] = mapped_column(String(64))
    t: Mapped[float] = mapped_column(Float)  # when the device answered (device clock)
    received_at: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(16))  # random | low_confidence | escalated
    confidence: Mapped[float | None] = mapped_column(Float)
    predicted: Mapped[str | None] = mapped_column(String(128), index=True)
    privacy: Mapped[str] = mapped_column(String(16))  # raw | hash | features | drop
    input_kind: Mapped[str] = mapped_column(String(16))  # image | audio | tabular | bytes | none
    content_type: Mapped[str | None] = mapped_column(String(64))
    blob_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)  # payload bytes in the blob store
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType)  # scores, features, input_meta, input_hash
    label: Mapped[str | None] = mapped_column(String(128), index=True)
    label_source: Mapped[str | None] = mapped_column(String(16))  # operator | device | application | import
    labelled_by: Mapped[str | None] = mapped_column(String(128))
    labelled_at: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # a delayed outcome, as sent


class SamplePolicyRow(Base):
    """The sample policy of a device group: devices matching ``selector`` (highest ``priority`` first) use
    ``policy`` (a ``telemetry.SamplerConfig`` subset) instead of their release manifest's."""

    __tablename__ = "sample_policies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    selector: Mapped[str] = mapped_column(String(1024))
    priority: Mapped[int] = mapped_column(Integer)
    policy: Mapped[dict[str, Any]] = mapped_column(JSONType)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(128))
