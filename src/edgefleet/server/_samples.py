"""``SampleStore``: the server side of sampled inputs (issue 13).

Devices upload the samples their ``Sampler`` kept (``POST /v1/devices/{id}/samples``, the same device
authentication as telemetry); each becomes one ``samples`` row (what the model answered, its confidence,
the device's class and region, the request id that feedback refers to) and, when the device's privacy mode
is ``raw``, one blob in the server's ``BlobStore`` (content-addressed: identical inputs are stored once).

Limits (``SampleStoreConfig``, ``EDGEFLEET_SAMPLES_*``): the largest payload, the bytes one device may keep
stored (samples past it are refused and counted, the device drops them), and retention (unlabelled samples
for ``retention_s``, labelled ones for ``labelled_retention_s``). ``delete_device`` erases every sample,
label and telemetry row of a device on request, audited.

Sample policies (``sample_policies``): per device group (a selector such as ``region=eu class=pi4``), the
sampler settings devices of that group use instead of their bundle's ``sampling.json`` — changed without a
new release; devices read theirs with ``GET /v1/devices/{id}/sample-policy``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import delete, func, select

from edgefleet.errors import NotFoundError, PayloadTooLargeError, ValidationError
from edgefleet.server._audit import audit
from edgefleet.server._blobs import BlobStore
from edgefleet.server._db import Database
from edgefleet.server._models import Device, TelemetryBatchRow, TelemetryWindowRow
from edgefleet.server._sample_models import SamplePolicyRow, SampleRow
from edgefleet.server._selector import Selector, group_of

__all__ = [
    "REQUEST_ID_PATTERN",
    "SampleIn",
    "SamplePolicy",
    "SamplePolicyIn",
    "SampleStore",
    "SampleStoreConfig",
    "SampleUpload",
    "input_kind",
]

REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{8,64}$"
_MIB = 1 << 20
_DAY = 86_400.0


class SampleStoreConfig(BaseSettings):
    """Limits of the sample store (``EDGEFLEET_SAMPLES_*`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_SAMPLES_", extra="ignore")

    max_payload_bytes: int = Field(128 * 1024, ge=256, description="largest input payload of one sample")
    max_device_bytes: int = Field(
        64 * _MIB, ge=0, description="payload bytes stored per device; past it, refused"
    )
    retention_s: float = Field(30 * _DAY, gt=0, description="unlabelled samples are kept this long")
    labelled_retention_s: float = Field(365 * _DAY, gt=0, description="labelled samples are kept this long")
    maintain_interval_s: float = Field(3600.0, gt=0, description="how often retention runs in the server")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleIn(_Strict):
    """One sample as a device's ``Sampler`` builds it (see ``edgefleet.telemetry.Sampler``)."""

    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="the request's id on the device")
    t: float = Field(description="UNIX seconds when the device answered")
    reason: Literal["random", "low_confidence", "escalated"]
    confidence: float | None = Field(None, ge=0, le=1)
    predicted: str | None = Field(None, max_length=128, description="the model's answer (class label)")
    privacy: Literal["raw", "hash", "features", "drop"]
    scores: list[float] = Field(default_factory=list, max_length=1024)
    features: list[float] = Field(default_factory=list, max_length=1024)
    input_meta: dict[str, Any] | None = Field(None, description="dtype and shape of a tensor input")
    input_b64: str | None = Field(None, description="the input's bytes (privacy raw only)")
    input_hash: str | None = Field(None, pattern=r"^[0-9a-f]{16,128}$")
    content_type: str | None = Field(None, max_length=64, pattern=r"^[a-z]+/[a-z0-9.+\-]+$")
    tags: dict[str, str] = Field(default_factory=dict, max_length=32)

    @field_validator("t", "scores", "features")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        vals = v if isinstance(v, list) else [v]
        if not all(math.isfinite(x) for x in vals):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        return v

    @model_validator(mode="after")
    def _privacy_holds(self) -> SampleIn:
        if self.input_b64 is not None and self.privacy != "raw":
            raise ValueError(f"input bytes sent with privacy {self.privacy!r}; only 'raw' carries them")
        if self.input_hash is not None and self.privacy != "hash":
            raise ValueError(f"an input hash sent with privacy {self.privacy!r}; only 'hash' carries one")
        if self.features and self.privacy == "drop":
            raise ValueError("features sent with privacy 'drop', which keeps only the answer")
        return self


class SampleUpload(_Strict):
    """``POST /v1/devices/{id}/samples``: a batch of samples (retries are harmless: ids are unique)."""

    samples: list[SampleIn] = Field(max_length=1000)


class SamplePolicy(_Strict):
    """The sampler settings a group of devices uses (fields of ``telemetry.SamplerConfig``)."""

    enabled: bool = True
    rate: float = Field(0.02, ge=0, le=0.05, description="keep 1-5 %% of rows (0 with enabled=False)")
    low_confidence_threshold: float = Field(0.6, ge=0, le=1)
    low_confidence_rate: float = Field(0.2, ge=0, le=1)
    escalated_rate: float = Field(0.5, ge=0, le=1)
    per_class_daily_cap: int | None = Field(
        None, ge=0, description="samples kept per predicted class per day"
    )
    daily_byte_budget: int | None = Field(None, ge=0, description="sample bytes queued per day")
    privacy: Literal["raw", "hash", "features", "drop"] = "hash"
    allow_metered: bool = Field(False, description="upload samples over a metered link too")


class SamplePolicyIn(_Strict):
    """``PUT /v1/sample-policies/{name}``: the policy of the devices ``selector`` matches."""

    selector: str = Field("*", max_length=1024)
    priority: int = Field(0, ge=-1000, le=1000, description="the highest matching priority wins")
    policy: SamplePolicy


def input_kind(
    data: bytes | None, content_type: str | None, meta: dict[str, Any] | None
) -> tuple[str, str | None]:
    """What a sampled payload is (``image``, ``audio``, ``tabular``, ``bytes`` or ``none``) and its type."""
    if data is None:
        return ("tabular" if meta else "none"), None
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image", "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio", "audio/wav"
    if data.startswith(b"OggS"):
        return "audio", "audio/ogg"
    if meta and "dtype" in meta and "shape" in meta:
        return "tabular", "application/x-tensor"
    return "bytes", content_type or "application/octet-stream"


class SampleStore:
    """Upload, query, retention and deletion of samples; sample policies. See the module docstring."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        config: SampleStoreConfig | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.db, self.blobs, self.clock = db, blobs, clock
        self.config = config or SampleStoreConfig()

    # --- upload -------------------------------------------------------------------------------

    def _decode(self, s: SampleIn) -> bytes | None:
        if s.input_b64 is None:
            return None
        limit = self.config.max_payload_bytes
        if len(s.input_b64) > (limit + 2) // 3 * 4 + 4:
            raise PayloadTooLargeError(
                f"sample {s.request_id}: input is larger than {limit} bytes",
                hint="lower the sampler's max_sample_bytes or sample with privacy 'hash'",
            )
        try:
            return base64.b64decode(s.input_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError(
                f"sample {s.request_id}: input_b64 is not base64", hint="send the input bytes base64-encoded"
            ) from None

    def upload(self, device_id: str, batch: SampleUpload) -> dict[str, int]:
        """Store a device's samples; return counts ``accepted``, ``duplicate`` and ``over_quota``.

        The whole batch is checked before anything is stored: one bad sample refuses the batch (4xx).
        """
        payloads = [self._decode(s) for s in batch.samples]
        now = self.clock()
        out = {"accepted": 0, "duplicate": 0, "over_quota": 0}
        with self.db.write() as s:
            dev = s.get(Device, device_id)
            if dev is None:
                raise NotFoundError(f"no device {device_id!r}", hint="enroll the device first")
            ids = [x.request_id for x in batch.samples]
            seen = set(s.scalars(select(SampleRow.request_id).where(SampleRow.request_id.in_(ids))))
            used = s.scalar(
                select(func.coalesce(func.sum(SampleRow.size), 0)).where(SampleRow.device_id == device_id)
            )
            region = (dev.tags or {}).get("region")
            for smp, data in zip(batch.samples, payloads, strict=True):
                if smp.request_id in seen:
                    out["duplicate"] += 1
                    continue
                size = len(data) if data is not None else 0
                if used + size > self.config.max_device_bytes:
                    out["over_quota"] += 1
                    continue
                used += size
                seen.add(smp.request_id)
                kind, ctype = input_kind(data, smp.content_type, smp.input_meta)
                sha = self.blobs.put(data) if data is not None else None
                model, version = smp.tags.get("model"), smp.tags.get("version")
                meta = {"scores": smp.scores, "features": smp.features}
                if smp.input_meta:
                    meta["input_meta"] = smp.input_meta
                if smp.input_hash:
                    meta["input_hash"] = smp.input_hash
                s.add(
                    SampleRow(
                        request_id=smp.request_id,
                        device_id=device_id,
                        release=f"{model}@{version}" if model and version else "-",
                        variant=smp.tags.get("variant"),
                        device_class=dev.device_class,
                        region=str(region)[:64] if region is not None else None,
                        t=smp.t,
                        received_at=now,
                        reason=smp.reason,
                        confidence=smp.confidence,
                        predicted=smp.predicted,
                        privacy=smp.privacy,
                        input_kind=kind,
                        content_type=ctype,
                        blob_sha256=sha,
                        size=size,
                        meta=meta,
                    )
                )
                out["accepted"] += 1
        return out

    # --- queries ------------------------------------------------------------------------------

    def list(
        self,
        *,
        device_id: str | None = None,
        release: str | None = None,
        predicted: str | None = None,
        label: str | None = None,
        labelled: bool | None = None,
        reason: str | None = None,
        max_confidence: float | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Samples matching every filter given, newest first (page on with ``before_id``)."""
        q = select(SampleRow).order_by(SampleRow.id.desc()).limit(limit)
        for col, v in (
            (SampleRow.device_id, device_id),
            (SampleRow.release, release),
            (SampleRow.predicted, predicted),
            (SampleRow.label, label),
            (SampleRow.reason, reason),
        ):
            if v is not None:
                q = q.where(col == v)
        if labelled is not None:
            q = q.where(SampleRow.label.is_not(None) if labelled else SampleRow.label.is_(None))
        if max_confidence is not None:
            q = q.where(SampleRow.confidence <= max_confidence)
        if before_id is not None:
            q = q.where(SampleRow.id < before_id)
        with self.db.read() as s:
            return [to_dict(r) for r in s.scalars(q)]

    def get(self, request_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            return to_dict(self._row(s, request_id), full=True)

    def payload(self, request_id: str) -> tuple[bytes, str]:
        """The sampled input's bytes and content type.

        Raises:
            NotFoundError: no such sample, or it was sampled without its input (privacy not ``raw``).
        """
        with self.db.read() as s:
            row = self._row(s, request_id)
            sha, ctype = row.blob_sha256, row.content_type
        if sha is None:
            raise NotFoundError(
                f"sample {request_id} has no stored input (privacy {row.privacy!r})",
                hint="devices send inputs only with the sample policy's privacy 'raw'",
            )
        return self.blobs.get(sha), ctype or "application/octet-stream"

    @staticmethod
    def _row(s: Any, request_id: str) -> SampleRow:
        row = s.scalar(select(SampleRow).where(SampleRow.request_id == request_id))
        if row is None:
            raise NotFoundError(
                f"no sample with request id {request_id!r}", hint="list them: edgefleet samples list"
            )
        return row

    def stats(self, *, release: str | None = None) -> dict[str, Any]:
        """Counts of samples, labelled ones and low-confidence ones, and stored bytes (optionally per release)."""
        q = select(
            func.count(SampleRow.id),
            func.count(SampleRow.label),
            func.coalesce(func.sum(SampleRow.size), 0),
            func.count(SampleRow.id).filter(SampleRow.reason == "low_confidence"),
        )
        if release is not None:
            q = q.where(SampleRow.release == release)
        with self.db.read() as s:
            n, labelled, nbytes, low = s.execute(q).one()
        return {"samples": n, "labelled": labelled, "bytes": int(nbytes), "low_confidence": low}

    # --- deletion and retention ---------------------------------------------------------------

    def _drop_blobs(self, shas: set[str]) -> int:
        """Delete the blobs no remaining sample refers to; return how many were deleted."""
        if not shas:
            return 0
        with self.db.read() as s:
            kept = set(s.scalars(select(SampleRow.blob_sha256).where(SampleRow.blob_sha256.in_(shas))))
        return sum(self.blobs.delete(sha) for sha in shas - kept)

    def delete_device(self, device_id: str, *, actor: str) -> dict[str, int]:
        """Erase a device's samples, labels and telemetry (rows and blobs); audited. The device stays enrolled."""
        from edgefleet.server._fleet_models import TelemetryRollup

        now = self.clock()
        with self.db.write() as s:
            if s.get(Device, device_id) is None:
                raise NotFoundError(f"no device {device_id!r}", hint="list them: edgefleet devices list")
            shas = set(s.scalars(select(SampleRow.blob_sha256).where(SampleRow.device_id == device_id)))
            batch_shas = set(
                s.scalars(
                    select(TelemetryBatchRow.blob_sha256).where(TelemetryBatchRow.device_id == device_id)
                )
            )
            out = {
                "samples": s.execute(delete(SampleRow).where(SampleRow.device_id == device_id)).rowcount,
                "telemetry_windows": s.execute(
                    delete(TelemetryWindowRow).where(TelemetryWindowRow.device_id == device_id)
                ).rowcount,
                "telemetry_rollups": s.execute(
                    delete(TelemetryRollup).where(TelemetryRollup.device_id == device_id)
                ).rowcount,
                "telemetry_batches": s.execute(
                    delete(TelemetryBatchRow).where(TelemetryBatchRow.device_id == device_id)
                ).rowcount,
            }
            audit(s, "samples.delete_device", actor=actor, now=now, device_id=device_id, **out)
        shas.discard(None)  # type: ignore[arg-type]
        out["blobs"] = self._drop_blobs(shas) + sum(self.blobs.delete(b) for b in batch_shas if b)
        return out

    def maintain(self) -> dict[str, int]:
        """Apply retention: drop unlabelled samples past ``retention_s`` and labelled ones past theirs."""
        now = self.clock()
        c = self.config
        old = (SampleRow.label.is_(None) & (SampleRow.received_at < now - c.retention_s)) | (
            SampleRow.label.is_not(None) & (SampleRow.received_at < now - c.labelled_retention_s)
        )
        with self.db.write() as s:
            shas = {x for x in s.scalars(select(SampleRow.blob_sha256).where(old)) if x}
            n = s.execute(delete(SampleRow).where(old)).rowcount
        return {"samples": n, "blobs": self._drop_blobs(shas)}

    # --- policies -----------------------------------------------------------------------------

    def put_policy(self, name: str, body: SamplePolicyIn, *, actor: str) -> dict[str, Any]:
        selector = str(Selector.parse(body.selector))
        now = self.clock()
        with self.db.write() as s:
            row = s.get(SamplePolicyRow, name)
            if row is None:
                row = SamplePolicyRow(name=name)
                s.add(row)
            row.selector, row.priority, row.policy = selector, body.priority, body.policy.model_dump()
            row.updated_at, row.updated_by = now, actor
            audit(s, "samples.policy", actor=actor, now=now, name=name, selector=selector, policy=row.policy)
            return _policy_dict(row)

    def policies(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(SamplePolicyRow).order_by(SamplePolicyRow.priority.desc(), SamplePolicyRow.name)
            return [_policy_dict(r) for r in s.scalars(q)]

    def delete_policy(self, name: str, *, actor: str) -> dict[str, Any]:
        with self.db.write() as s:
            row = s.get(SamplePolicyRow, name)
            if row is None:
                raise NotFoundError(
                    f"no sample policy {name!r}", hint="list them: edgefleet samples policy list"
                )
            s.delete(row)
            audit(s, "samples.policy_delete", actor=actor, now=self.clock(), name=name)
        return {"deleted": name}

    def policy_for(self, device_id: str) -> dict[str, Any]:
        """The policy of the highest-priority group the device belongs to: ``{"source", "policy", "etag"}``.

        ``source`` is ``group:NAME``, or ``none`` (then ``policy`` is null and the device keeps its bundle's).
        """
        with self.db.read() as s:
            dev = s.get(Device, device_id)
            if dev is None:
                raise NotFoundError(f"no device {device_id!r}", hint="enroll the device first")
            q = select(SamplePolicyRow).order_by(SamplePolicyRow.priority.desc(), SamplePolicyRow.name)
            row = group_of(dev, s.scalars(q))
            body = (
                {"source": f"group:{row.name}", "policy": row.policy}
                if row
                else {"source": "none", "policy": None}
            )
        body["etag"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return body


def _policy_dict(r: SamplePolicyRow) -> dict[str, Any]:
    return {
        "name": r.name,
        "selector": r.selector,
        "priority": r.priority,
        "policy": r.policy,
        "updated_at": r.updated_at,
        "updated_by": r.updated_by,
    }


def to_dict(r: SampleRow, *, full: bool = False) -> dict[str, Any]:
    """A sample as the API shows it (``full``: with its scores and features)."""
    d = {
        "request_id": r.request_id,
        "id": r.id,
        "device_id": r.device_id,
        "release": r.release,
        "variant": r.variant,
        "device_class": r.device_class,
        "region": r.region,
        "t": r.t,
        "received_at": r.received_at,
        "reason": r.reason,
        "confidence": r.confidence,
        "predicted": r.predicted,
        "privacy": r.privacy,
        "input_kind": r.input_kind,
        "content_type": r.content_type,
        "has_input": r.blob_sha256 is not None,
        "size": r.size,
        "label": r.label,
        "label_source": r.label_source,
        "labelled_by": r.labelled_by,
        "labelled_at": r.labelled_at,
        "outcome": r.outcome,
    }
    if full:
        d["meta"] = r.meta
    return d
