"""Fleet-side logic the control plane mounts: per-device outliers, alert rules and the retraining hook.

Pure Python over :class:`Window` objects; storage, HTTP and scheduling belong to the server.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.errors import ConflictError, NotFoundError, TelemetryError
from edgefleet.telemetry._drift import DriftReport
from edgefleet.telemetry._window import Window, merge_windows

__all__ = [
    "Alert",
    "AlertRules",
    "CommandHook",
    "Outlier",
    "RetrainHook",
    "RetrainRequest",
    "RetrainTrigger",
    "WebhookHook",
    "detect_outliers",
    "evaluate_alerts",
    "merge_by",
]

log = logging.getLogger(__name__)

# metric -> (how to read it from a window, which direction is bad)
_METRICS: dict[str, tuple[Callable[[Window], float | None], Literal["high", "low", "both"]]] = {
    "latency_p50_ms": (lambda w: w.latency_quantile(0.5), "high"),
    "latency_p95_ms": (lambda w: w.latency_quantile(0.95), "high"),
    "mean_confidence": (lambda w: w.mean_confidence, "low"),
    "error_rate": (lambda w: w.error_rate, "high"),
    "drift_score": (lambda w: w.drift_score, "high"),
}


def merge_by(windows: Iterable[Window], by: Sequence[str]) -> dict[tuple[str, ...], Window]:
    """Merge windows per tuple of tag values (``"-"`` where a tag is missing), e.g. by device_id."""
    groups: dict[tuple[str, ...], list[Window]] = {}
    for w in windows:
        groups.setdefault(tuple(w.tags.get(k, "-") for k in by), []).append(w)
    return {k: merge_windows(v, on_mismatch="drop") for k, v in groups.items()}


@dataclass(frozen=True)
class Outlier:
    """A device whose metric sits far from the other devices of its group."""

    device_id: str
    group: tuple[str, ...]
    metric: str
    value: float
    median: float
    robust_z: float
    direction: str
    peers: int


def detect_outliers(
    windows: Mapping[str, Window] | Iterable[Window],
    *,
    group_by: Sequence[str] = ("device_class",),
    metrics: Sequence[str] = ("latency_p95_ms", "mean_confidence", "error_rate"),
    z: float = 3.5,
    min_devices: int = 5,
    min_requests: int = 20,
    rel_floor: float = 0.05,
    device_tag: str = "device_id",
) -> list[Outlier]:
    """Devices whose latency, confidence or error rate is far from their class (robust z-score).

    ``robust_z = (value - median) / scale`` with ``scale = max(1.4826 * MAD, rel_floor * |median|)``:
    the floor keeps a tight, healthy class from flagging a device 2% slower than the rest.

    Args:
        windows: device id -> that device's (merged) window, or windows tagged with ``device_tag``.
        group_by: tags that define peers (device class by default; add "region", "release"...).
        metrics: names among latency_p50_ms, latency_p95_ms, mean_confidence, error_rate, drift_score.
        z: threshold on |robust z| in the bad direction.
        min_devices: groups with fewer devices (with data) are not judged.
        min_requests: devices with fewer requests are not judged.
    """
    unknown = [m for m in metrics if m not in _METRICS]
    if unknown:
        raise TelemetryError(f"unknown outlier metrics {unknown}", hint=f"use some of {sorted(_METRICS)}")
    if isinstance(windows, Mapping):
        per_device = dict(windows)
    else:
        per_device = {k[0]: w for k, w in merge_by(windows, [device_tag]).items()}
    groups: dict[tuple[str, ...], list[tuple[str, Window]]] = {}
    for dev, w in per_device.items():
        if w.requests < min_requests:
            continue
        groups.setdefault(tuple(w.tags.get(k, "-") for k in group_by), []).append((dev, w))
    out: list[Outlier] = []
    for group, members in sorted(groups.items()):
        for metric in metrics:
            read, bad = _METRICS[metric]
            vals = [(d, read(w)) for d, w in members]
            vals = [(d, float(v)) for d, v in vals if v is not None]
            if len(vals) < min_devices:
                continue
            x = np.array([v for _, v in vals])
            med = float(np.median(x))
            mad = float(np.median(np.abs(x - med)))
            scale = max(1.4826 * mad, rel_floor * abs(med), 1e-9)
            for d, v in vals:
                rz = (v - med) / scale
                if (bad in ("high", "both") and rz > z) or (bad in ("low", "both") and rz < -z):
                    out.append(
                        Outlier(
                            d, group, metric, v, med, round(rz, 3), "high" if rz > 0 else "low", len(vals)
                        )
                    )
    return out


class AlertRules(BaseSettings):
    """When the fleet raises alerts (``EDGEFLEET_ALERTS_*``)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_ALERTS_", extra="ignore")

    drift: bool = Field(True, description="alert when a group's drift report says drifted")
    outlier_z: float = Field(3.5, gt=0, description="robust z-score from which a device is an outlier")
    outlier_min_devices: int = Field(5, ge=2, description="peers needed before judging outliers")
    silent_after_s: float = Field(900.0, gt=0, description="a device not heard from for this long is silent")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="device error rate that raises an alert")
    min_requests: int = Field(20, ge=1, description="requests a device needs before rate alerts")


@dataclass(frozen=True)
class Alert:
    """One alert; ``key`` is stable for the same condition so the server can deduplicate."""

    rule: str  # drift | outlier | silent | error_rate
    severity: str  # warning | critical
    key: str
    message: str
    subject: dict[str, str] = field(default_factory=dict)
    value: float | None = None
    threshold: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_alerts(
    *,
    device_windows: Mapping[str, Window] | None = None,
    group_drift: Mapping[tuple[str, ...], DriftReport] | None = None,
    group_by: Sequence[str] = ("device_class", "region"),
    last_seen: Mapping[str, float] | None = None,
    now: float | None = None,
    rules: AlertRules | None = None,
) -> list[Alert]:
    """Apply the alert rules to what the server knows.

    Args:
        device_windows: device id -> its recent merged window (error rates, outliers).
        group_drift: output of ``drift_by_group`` (drift alerts), keyed by values of ``group_by``.
        last_seen: device id -> wall-clock time of its last heartbeat or upload (silent devices).
        now: wall clock (default ``time.time()``).
    """
    r = rules or AlertRules()
    t = time.time() if now is None else now
    alerts: list[Alert] = []
    for key, rep in sorted((group_drift or {}).items()):
        if r.drift and rep.drifted:
            subject = dict(zip(group_by, key, strict=False))
            top = [f"{x.name} (PSI {x.psi:.2f})" for x in rep.fired[:3]]
            alerts.append(
                Alert(
                    rule="drift",
                    severity="critical" if rep.score >= 0.9 else "warning",
                    key="drift:" + "/".join(key),
                    message=f"input drift in {subject}: score {rep.score:.2f}; strongest: {', '.join(top)}",
                    subject=subject,
                    value=rep.score,
                    evidence=rep.to_dict(tests=False),
                )
            )
    dw = device_windows or {}
    for dev, w in sorted(dw.items()):
        er = w.error_rate
        if er is not None and w.requests >= r.min_requests and er > r.max_error_rate:
            alerts.append(
                Alert(
                    rule="error_rate",
                    severity="critical" if er > 4 * r.max_error_rate else "warning",
                    key=f"error_rate:{dev}",
                    message=f"device {dev}: {er:.1%} of {w.requests} requests failed",
                    subject={"device_id": dev, **w.tags},
                    value=er,
                    threshold=r.max_error_rate,
                    evidence={"error_codes": dict(w.error_codes)},
                )
            )
    if dw:
        for o in detect_outliers(
            dw,
            group_by=[g for g in group_by if g != "region"] or ["device_class"],
            z=r.outlier_z,
            min_devices=r.outlier_min_devices,
            min_requests=r.min_requests,
        ):
            alerts.append(
                Alert(
                    rule="outlier",
                    severity="warning",
                    key=f"outlier:{o.device_id}:{o.metric}",
                    message=(
                        f"device {o.device_id}: {o.metric} {o.value:.3g} vs median {o.median:.3g} of "
                        f"{o.peers} peers (robust z {o.robust_z:+.1f})"
                    ),
                    subject={"device_id": o.device_id},
                    value=o.value,
                    threshold=r.outlier_z,
                    evidence=asdict(o),
                )
            )
    for dev, seen in sorted((last_seen or {}).items()):
        age = t - seen
        if age > r.silent_after_s:
            alerts.append(
                Alert(
                    rule="silent",
                    severity="critical" if age > 8 * r.silent_after_s else "warning",
                    key=f"silent:{dev}",
                    message=f"device {dev} silent for {age / 60:.0f} min",
                    subject={"device_id": dev},
                    value=age,
                    threshold=r.silent_after_s,
                )
            )
    return alerts


# --- retraining trigger ----------------------------------------------------------------------------


@dataclass
class RetrainRequest:
    """A proposal to retrain; fired only after approval (unless the trigger says otherwise)."""

    id: str
    created: float
    model: str
    reason: str
    subject: dict[str, str]
    evidence: dict[str, Any]
    status: str = "pending"  # pending | approved | rejected | fired | failed
    decided_by: str | None = None
    decided_at: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetrainRequest:
        return cls(**dict(d))


class RetrainHook(Protocol):
    """What happens when a retraining request fires (a webhook, a command, a CI job...)."""

    def __call__(self, request: RetrainRequest) -> None: ...


class WebhookHook:
    """POST the request as JSON to ``url``; a non-2xx answer fails the request."""

    def __init__(
        self, url: str, *, timeout_s: float = 10.0, headers: Mapping[str, str] | None = None
    ) -> None:
        self.url, self.timeout_s, self.headers = url, timeout_s, dict(headers or {})

    def __call__(self, request: RetrainRequest) -> None:
        import httpx

        try:
            r = httpx.post(self.url, json=request.to_dict(), timeout=self.timeout_s, headers=self.headers)
        except httpx.HTTPError as e:
            raise TelemetryError(f"retraining webhook {self.url} failed: {e}", hint="check the URL") from e
        if not 200 <= r.status_code < 300:
            raise TelemetryError(
                f"retraining webhook {self.url} answered {r.status_code}", hint="check the receiving service"
            )


class CommandHook:
    """Run ``argv`` with the request as JSON on stdin; a non-zero exit fails the request."""

    def __init__(self, argv: Sequence[str], *, timeout_s: float = 300.0) -> None:
        if not argv:
            raise TelemetryError("CommandHook needs a command", hint="e.g. ['make', 'retrain']")
        self.argv, self.timeout_s = list(argv), timeout_s

    def __call__(self, request: RetrainRequest) -> None:
        try:
            r = subprocess.run(
                self.argv,
                input=json.dumps(request.to_dict()).encode(),
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise TelemetryError(f"retraining command {self.argv[0]} failed: {e}") from e
        if r.returncode != 0:
            raise TelemetryError(
                f"retraining command {self.argv[0]} exited {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}",
                hint="run the command by hand with the request JSON on stdin",
            )


class RetrainTrigger:
    """Turns sustained drift alerts into retraining requests; a human approves them by default.

    Args:
        hook: what runs when a request fires.
        require_approval: True (default): requests wait in ``pending`` until :meth:`approve`.
        min_consecutive: drift alerts in a row (same group) before a request is made.
        cooldown_s: no new request for the same group within this time of the last one.
    """

    def __init__(
        self,
        hook: RetrainHook,
        *,
        model: str,
        require_approval: bool = True,
        min_consecutive: int = 3,
        cooldown_s: float = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hook, self.model = hook, model
        self.require_approval, self.min_consecutive, self.cooldown_s = (
            require_approval,
            min_consecutive,
            cooldown_s,
        )
        self._clock = clock
        self._streak: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self.requests: dict[str, RetrainRequest] = {}

    def consider(self, alerts: Iterable[Alert]) -> list[RetrainRequest]:
        """Feed one evaluation's alerts; return the requests it created (fired at once if no approval)."""
        now = self._clock()
        seen = {a.key: a for a in alerts if a.rule == "drift"}
        for k in list(self._streak):
            if k not in seen:
                del self._streak[k]  # the streak must be consecutive
        created = []
        for key, a in seen.items():
            self._streak[key] = self._streak.get(key, 0) + 1
            if self._streak[key] < self.min_consecutive or now - self._last.get(key, -1e18) < self.cooldown_s:
                continue
            req = RetrainRequest(
                id=uuid.uuid4().hex,
                created=now,
                model=self.model,
                reason=a.message,
                subject=dict(a.subject),
                evidence={"alert": a.key, "score": a.value, "consecutive": self._streak[key], **a.evidence},
            )
            self.requests[req.id] = req
            self._last[key] = now
            created.append(req)
            log.info("retraining proposed for %s: %s", self.model, a.message, extra={"request_id": req.id})
            if not self.require_approval:
                self._fire(req, "auto")
        return created

    @property
    def pending(self) -> list[RetrainRequest]:
        return [r for r in self.requests.values() if r.status == "pending"]

    def _get(self, request_id: str) -> RetrainRequest:
        try:
            req = self.requests[request_id]
        except KeyError:
            raise NotFoundError(
                f"no retraining request {request_id}", hint="list the pending requests"
            ) from None
        if req.status != "pending":
            raise ConflictError(f"retraining request {request_id} is already {req.status}")
        return req

    def approve(self, request_id: str, by: str) -> RetrainRequest:
        """Approve and fire a pending request (its status ends as fired or failed)."""
        return self._fire(self._get(request_id), by)

    def reject(self, request_id: str, by: str) -> RetrainRequest:
        req = self._get(request_id)
        req.status, req.decided_by, req.decided_at = "rejected", by, self._clock()
        return req

    def _fire(self, req: RetrainRequest, by: str) -> RetrainRequest:
        req.status, req.decided_by, req.decided_at = "approved", by, self._clock()
        try:
            self.hook(req)
        except Exception as e:  # noqa: BLE001 - recorded on the request, shown to the operator
            req.status, req.error = "failed", str(e)
            log.warning("retraining hook failed: %s", e, extra={"request_id": req.id})
        else:
            req.status = "fired"
        return req
