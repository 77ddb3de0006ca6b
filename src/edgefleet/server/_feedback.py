"""Ground truth for samples: feedback from devices and applications, operator labels, Label Studio files.

Every label change is one audit entry (``samples.label``: request id, old and new label, source), written in
the transaction that changes it. A label is a class name (a string of 1-128 printable characters; numbers
are refused, not coerced); a delayed ``outcome`` (any small JSON value, e.g. ``{"returned": true}``) may come
with it or alone. Feedback naming an unknown request id is refused (404) and nothing is stored.

Label Studio: :func:`export_label_studio` writes tasks (``data`` holds the input as a data URI for images
and audio, or the sample's features as text; the model's answer as a ``prediction``; an existing label as an
``annotation``), and :meth:`LabelService.import_label_studio` takes an export of annotated tasks back.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from sqlalchemy import select

from edgefleet.errors import NotFoundError, PayloadTooLargeError, ValidationError
from edgefleet.server._audit import audit
from edgefleet.server._db import Database
from edgefleet.server._sample_models import SampleRow
from edgefleet.server._samples import REQUEST_ID_PATTERN, SampleStore, to_dict

__all__ = ["FeedbackIn", "LabelIn", "LabelService", "MAX_IMPORT_BYTES", "export_label_studio"]

Label = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
RequestId = Annotated[str, StringConstraints(strict=True, pattern=REQUEST_ID_PATTERN)]
MAX_IMPORT_BYTES = 32 << 20
_MAX_OUTCOME_BYTES = 4096


class FeedbackIn(BaseModel):
    """``POST /v1/feedback`` (application) or ``/v1/devices/{id}/feedback`` (device): one request's truth."""

    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    label: Label | None = None
    outcome: Any = Field(None, description="a delayed outcome: a small JSON value (at most 4 KiB)")

    @field_validator("outcome")
    @classmethod
    def _small(cls, v: Any) -> Any:
        if v is not None and len(json.dumps(v, allow_nan=False)) > _MAX_OUTCOME_BYTES:
            raise ValueError(f"outcome is larger than {_MAX_OUTCOME_BYTES} bytes of JSON")
        return v

    @model_validator(mode="after")
    def _something(self) -> FeedbackIn:
        if self.label is None and self.outcome is None:
            raise ValueError("send a label, an outcome, or both")
        return self


class LabelIn(BaseModel):
    """``POST /v1/samples/labels``: one label for many samples (a batch), or ``null`` to clear (undo)."""

    model_config = ConfigDict(extra="forbid")

    request_ids: list[RequestId] = Field(min_length=1, max_length=500)
    label: Label | None


class LabelService:
    """Writes labels and outcomes on samples (audited); Label Studio import."""

    def __init__(self, db: Database, *, clock: Callable[[], float]) -> None:
        self.db, self.clock = db, clock

    def _set(self, s: Any, row: SampleRow, label: str | None, *, source: str, actor: str, now: float) -> None:
        old = row.label
        row.label = label
        row.label_source = source if label is not None else None
        row.labelled_by = actor if label is not None else None
        row.labelled_at = now if label is not None else None
        audit(
            s,
            "samples.label",
            actor=actor,
            now=now,
            device_id=row.device_id,
            request_id=row.request_id,
            old=old,
            new=label,
            source=source,
        )

    def feedback(
        self, body: FeedbackIn, *, source: str, actor: str, device_id: str | None = None
    ) -> dict[str, Any]:
        """Apply feedback; a device (``device_id``) may only give feedback on its own samples."""
        now = self.clock()
        with self.db.write() as s:
            row = s.scalar(select(SampleRow).where(SampleRow.request_id == body.request_id))
            if row is None or (device_id is not None and row.device_id != device_id):
                raise NotFoundError(
                    f"no sample with request id {body.request_id!r}"
                    + (f" from device {device_id}" if device_id else ""),
                    hint="feedback refers to a sampled request: use the request id the device gave it",
                )
            if body.label is not None:
                self._set(s, row, body.label, source=source, actor=actor, now=now)
            if body.outcome is not None:
                row.outcome = {"value": body.outcome, "at": now, "source": source}
                audit(
                    s,
                    "samples.outcome",
                    actor=actor,
                    now=now,
                    device_id=row.device_id,
                    request_id=row.request_id,
                )
            return to_dict(row)

    def label(self, body: LabelIn, *, actor: str) -> dict[str, Any]:
        """Label (or clear) samples as an operator; every id must exist, else nothing changes."""
        now = self.clock()
        with self.db.write() as s:
            rows = {
                r.request_id: r
                for r in s.scalars(select(SampleRow).where(SampleRow.request_id.in_(body.request_ids)))
            }
            missing = [i for i in body.request_ids if i not in rows]
            if missing:
                raise NotFoundError(
                    f"no samples with request ids {missing[:5]}{' ...' if len(missing) > 5 else ''}",
                    hint="nothing was labelled; list samples with: edgefleet samples list",
                )
            for rid in dict.fromkeys(body.request_ids):
                self._set(s, rows[rid], body.label, source="operator", actor=actor, now=now)
        return {"labelled": len(rows), "label": body.label}

    def import_label_studio(self, tasks: Any, *, actor: str) -> dict[str, Any]:
        """Apply the labels of a Label Studio export (a JSON list of tasks with ``data.request_id``).

        A task's label is the first ``choices`` value of its newest annotation that is not cancelled.
        Tasks without one are counted ``unlabelled``; request ids the server does not know, ``unknown``.
        """
        if not isinstance(tasks, list):
            raise ValidationError(
                "a Label Studio export is a JSON list of tasks",
                hint="export the project from Label Studio as JSON (not JSON-MIN or CSV)",
            )
        wanted: dict[str, str] = {}
        unlabelled = 0
        for i, t in enumerate(tasks):
            rid = (
                t.get("data", {}).get("request_id")
                if isinstance(t, dict) and isinstance(t.get("data"), dict)
                else None
            )
            if not isinstance(rid, str):
                raise ValidationError(
                    f"task {i} has no data.request_id",
                    hint="import files exported from tasks made by: edgefleet samples export --format label-studio",
                )
            label = _task_label(t)
            if label is None:
                unlabelled += 1
                continue
            LabelIn(request_ids=[rid], label=label)  # the same checks as the API's
            wanted[rid] = label
        now = self.clock()
        changed = 0
        with self.db.write() as s:
            rows = {
                r.request_id: r
                for r in s.scalars(select(SampleRow).where(SampleRow.request_id.in_(list(wanted))))
            }
            for rid, label in wanted.items():
                row = rows.get(rid)
                if row is not None and row.label != label:
                    self._set(s, row, label, source="import", actor=actor, now=now)
                    changed += 1
        return {
            "labelled": changed,
            "unchanged": len(rows) - changed,
            "unlabelled": unlabelled,
            "unknown": len(wanted) - len(rows),
        }


def _task_label(task: dict[str, Any]) -> str | None:
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    for ann in reversed(anns):
        for r in ann.get("result") or []:
            choices = (r.get("value") or {}).get("choices") if isinstance(r, dict) else None
            if isinstance(choices, list) and choices:
                return choices[0] if isinstance(choices[0], str) else str(choices[0])
    return None


def export_label_studio(
    store: SampleStore, samples: list[dict[str, Any]], *, max_bytes: int = MAX_IMPORT_BYTES
) -> list[dict[str, Any]]:
    """Label Studio tasks for ``samples`` (``SampleStore.list`` rows), inputs inlined as data URIs.

    Raises:
        PayloadTooLargeError: the export would pass ``max_bytes`` (export fewer samples at a time).
    """
    tasks, total = [], 0
    for smp in samples:
        data: dict[str, Any] = {
            "request_id": smp["request_id"],
            "device_id": smp["device_id"],
            "release": smp["release"],
            "predicted": smp["predicted"],
            "confidence": smp["confidence"],
        }
        to_name = "text"
        if smp["has_input"] and smp["input_kind"] in ("image", "audio"):
            raw, ctype = store.payload(smp["request_id"])
            data[smp["input_kind"]] = f"data:{ctype};base64,{base64.b64encode(raw).decode()}"
            to_name = smp["input_kind"]
        else:
            full = store.get(smp["request_id"])
            data["text"] = json.dumps(full["meta"].get("features") or full["meta"].get("scores"))
        task: dict[str, Any] = {"data": data}
        if smp["predicted"] is not None:
            task["predictions"] = [
                {
                    "model_version": smp["release"],
                    "score": smp["confidence"],
                    "result": [_choice(smp["predicted"], to_name)],
                }
            ]
        if smp["label"] is not None:
            task["annotations"] = [{"result": [_choice(smp["label"], to_name)]}]
        total += len(json.dumps(task))
        if total > max_bytes:
            raise PayloadTooLargeError(
                f"the export passes {max_bytes} bytes",
                hint="export fewer samples at a time (--limit, --release)",
            )
        tasks.append(task)
    return tasks


def _choice(label: str, to_name: str) -> dict[str, Any]:
    return {"from_name": "label", "to_name": to_name, "type": "choices", "value": {"choices": [label]}}
