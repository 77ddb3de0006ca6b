"""Fleet alerts and the retraining workflow.

Alerts (drift per release/class/region against the bundle's ``reference.json``, per-device outliers,
silent devices, error rates) are evaluated over the last ``lookback_s`` of telemetry, kept open while
observed, and recorded as events in the audit log. A drift alert seen in ``retrain_min_consecutive``
evaluations in a row proposes a retraining request, which an admin approves (the default) before the
configured webhook or command runs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import shlex
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.errors import ConfigError, ConflictError, NotFoundError
from edgefleet.server._audit import audit
from edgefleet.server._fleet_models import FleetAlert, RetrainRequestRow
from edgefleet.server._fleetview import ACTOR, FleetQueries, OnQueries, Query, rounded, split_release
from edgefleet.server._models import Device, ServerState
from edgefleet.telemetry import CommandHook, RetrainRequest, WebhookHook, evaluate_alerts

__all__ = ["FleetAlerts"]

log = logging.getLogger(__name__)

_DRIFT_STATE = "fleet.drift"


class FleetAlerts(OnQueries):
    """Alert evaluation and state, and retraining requests, over the fleet's queries.

    Raises:
        ConfigError: both a retraining webhook and a retraining command are configured.
    """

    def __init__(self, queries: FleetQueries) -> None:
        self.queries = queries
        if self.config.retrain_webhook_url and self.config.retrain_command:
            raise ConfigError(
                "both a retraining webhook and a retraining command are configured",
                hint="set only one of EDGEFLEET_FLEET_RETRAIN_WEBHOOK_URL and EDGEFLEET_FLEET_RETRAIN_COMMAND",
            )

    # --- alerts --------------------------------------------------------------------------------

    def alerts(self, *, state: str | None = "open", limit: int = 200) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(FleetAlert).order_by(FleetAlert.last_at.desc(), FleetAlert.id.desc()).limit(limit)
            if state:
                q = q.where(FleetAlert.state == state)
            return [_alert_dict(a) for a in s.scalars(q)]

    def evaluate(self, now: float | None = None) -> dict[str, Any]:
        """Evaluate the alert rules over the last ``lookback_s`` and record what changed.

        New alerts are recorded as ``alert.raised`` events, alerts no longer observed as ``alert.resolved``;
        a drift alert seen ``retrain_min_consecutive`` times in a row proposes a retraining request.

        Returns:
            ``{"raised": [...], "resolved": [...], "open": n, "retrain_requests": [...]}``.
        """
        now = self.now() if now is None else now
        q = Query(now - self.config.lookback_s, now)
        with self.db.read() as s:
            ws, _ = self.queries.load(q, s=s)
            last_seen = {
                d.id: d.last_seen for d in s.scalars(select(Device).where(Device.revoked.is_(False)))
            }
        per = self.queries.per_device(ws)
        by = ("release", "device_class", "region")
        group_drift = {}
        drift_rows = []
        if ws:
            results, _, _ = self.queries.drift_reports(q, by, ws)
            for _label, variant, key, rep, n_dev in results:
                group_drift[key] = rep
                drift_rows.append(
                    {
                        **dict(zip(by, key, strict=True)),
                        "variant": variant,
                        "score": round(rep.score, 4),
                        "drifted": rep.drifted,
                        "rows": rep.rows,
                        "devices": n_dev,
                    }
                )
        found = evaluate_alerts(
            device_windows=per,
            group_drift=group_drift,
            group_by=by,
            last_seen=last_seen,
            now=now,
            rules=self.rules,
        )
        found = {
            _alert_key(a.key): a
            for a in found
            if a.rule != "outlier"
            or self.queries.keep_outlier(
                a.evidence["metric"],
                a.evidence["value"],
                a.evidence["median"],
                a.evidence["robust_z"],
                self.rules.outlier_z,
            )
        }
        raised, resolved, created = [], [], []
        with self.db.write() as s:
            self.db.lock(s, "fleet-alerts")
            current = {a.key: a for a in s.scalars(select(FleetAlert).where(FleetAlert.state == "open"))}
            for key, a in found.items():
                row = current.get(key)
                if row is None:
                    row = FleetAlert(
                        key=key,
                        rule=a.rule,
                        severity=a.severity,
                        state="open",
                        message=a.message,
                        subject=dict(a.subject),
                        value=rounded(a.value, 6),
                        threshold=a.threshold,
                        evidence=_jsonable(a.evidence),
                        first_at=now,
                        last_at=now,
                        evaluations=1,
                    )
                    s.add(row)
                    audit(
                        s,
                        "alert.raised",
                        actor=ACTOR,
                        now=now,
                        device_id=a.subject.get("device_id"),
                        key=key,
                        rule=a.rule,
                        severity=a.severity,
                        message=a.message,
                        value=rounded(a.value, 6),
                        subject=dict(a.subject),
                    )
                    raised.append(key)
                else:
                    row.severity, row.message, row.value = a.severity, a.message, rounded(a.value, 6)
                    row.evidence, row.last_at = _jsonable(a.evidence), now
                    row.evaluations += 1
            for key, row in current.items():
                if key not in found:
                    row.state, row.resolved_at = "resolved", now
                    audit(
                        s,
                        "alert.resolved",
                        actor=ACTOR,
                        now=now,
                        device_id=(row.subject or {}).get("device_id"),
                        key=key,
                        rule=row.rule,
                        message=f"resolved: {row.message}",
                    )
                    resolved.append(key)
            s.flush()
            for row in s.scalars(
                select(FleetAlert).where(FleetAlert.state == "open", FleetAlert.rule == "drift")
            ):
                req = self._propose(s, row, now)
                if req is not None:
                    created.append(req)
            s.merge(ServerState(key=_DRIFT_STATE, value={"at": now, "groups": drift_rows}, updated_at=now))
            n_open = (
                s.scalar(select(func.count()).select_from(FleetAlert).where(FleetAlert.state == "open")) or 0
            )
        fired = []
        if not self.config.retrain_require_approval:
            for rid in created:
                fired.append(self._fire(rid, ACTOR))
        return {
            "at": now,
            "raised": raised,
            "resolved": resolved,
            "open": n_open,
            "retrain_requests": created,
            "fired": fired,
        }

    def _propose(self, s: Session, alert: FleetAlert, now: float) -> str | None:
        if alert.evaluations < self.config.retrain_min_consecutive:
            return None
        last = s.scalar(
            select(func.max(RetrainRequestRow.created_at)).where(RetrainRequestRow.alert_key == alert.key)
        )
        if last is not None and now - last < self.config.retrain_cooldown_s:
            return None
        rel = split_release((alert.subject or {}).get("release", ""))
        rid = secrets.token_hex(8)
        s.add(
            RetrainRequestRow(
                id=rid,
                created_at=now,
                model=(rel[0] if rel else "-")[:64],
                alert_key=alert.key,
                reason=alert.message,
                subject=dict(alert.subject or {}),
                evidence={
                    "alert_id": alert.id,
                    "score": alert.value,
                    "consecutive": alert.evaluations,
                    **{k: v for k, v in (alert.evidence or {}).items() if k != "tests"},
                },
                status="pending",
                hook=self._hook_name(),
            )
        )
        audit(
            s,
            "retrain.requested",
            actor=ACTOR,
            now=now,
            request_id=rid,
            key=alert.key,
            message=f"retraining proposed: {alert.message}",
            requires_approval=self.config.retrain_require_approval,
        )
        log.info("retraining proposed for %s (%s)", alert.key, rid)
        return rid

    # --- retraining requests -------------------------------------------------------------------

    def retrain_requests(self, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(RetrainRequestRow).order_by(RetrainRequestRow.created_at.desc()).limit(limit)
            if status:
                q = q.where(RetrainRequestRow.status == status)
            return [_request_dict(r) for r in s.scalars(q)]

    def _hook_name(self) -> str | None:
        if self.config.retrain_webhook_url:
            return f"webhook {self.config.retrain_webhook_url}"[:512]
        if self.config.retrain_command:
            return f"command {self.config.retrain_command}"[:512]
        return None

    def _hook(self) -> Any:
        c = self.config
        if c.retrain_webhook_url:
            return WebhookHook(c.retrain_webhook_url, timeout_s=c.retrain_timeout_s)
        if c.retrain_command:
            return CommandHook(shlex.split(c.retrain_command), timeout_s=c.retrain_timeout_s)
        return None

    def approve(self, request_id: str, actor: str) -> dict[str, Any]:
        """Approve a pending request and run the hook (status ends fired, failed, or approved without a hook)."""
        return self._fire(request_id, actor)

    def reject(self, request_id: str, actor: str) -> dict[str, Any]:
        now = self.now()
        with self.db.write() as s:
            row = self._pending(s, request_id)
            row.status, row.decided_by, row.decided_at = "rejected", actor, now
            audit(
                s,
                "retrain.rejected",
                actor=ACTOR,
                now=now,
                request_id=request_id,
                by=actor,
                message=f"rejected by {actor}",
            )
            return _request_dict(row)

    def _pending(self, s: Session, request_id: str) -> RetrainRequestRow:
        row = s.get(RetrainRequestRow, request_id)
        if row is None:
            raise NotFoundError(
                f"no retraining request {request_id!r}",
                hint="list them: GET /v1/fleet/retrain-requests?status=pending",
            )
        if row.status != "pending":
            raise ConflictError(
                f"retraining request {request_id} is already {row.status}",
                hint="only pending requests can be approved or rejected",
            )
        return row

    def _fire(self, request_id: str, actor: str) -> dict[str, Any]:
        now = self.now()
        with self.db.write() as s:
            row = self._pending(s, request_id)
            row.status, row.decided_by, row.decided_at = "approved", actor, now
            row.hook = self._hook_name()
            audit(
                s,
                "retrain.approved",
                actor=ACTOR,
                now=now,
                request_id=request_id,
                by=actor,
                message=f"approved by {actor}",
            )
            req = RetrainRequest(
                id=row.id,
                created=row.created_at,
                model=row.model,
                reason=row.reason,
                subject=dict(row.subject),
                evidence=dict(row.evidence),
                status="approved",
                decided_by=actor,
                decided_at=now,
            )
        hook = self._hook()
        if hook is None:
            log.warning("retraining request %s approved, but no hook is configured", request_id)
            return self._get_request(request_id)
        error = None
        try:
            hook(req)  # outside any transaction: a slow webhook holds no database lock
        except Exception as e:  # noqa: BLE001 - recorded on the request and shown to the operator
            error = getattr(e, "message", None) or str(e)
            log.warning("retraining hook failed for %s: %s", request_id, error)
        done = self.now()
        with self.db.write() as s:
            row = s.get(RetrainRequestRow, request_id)
            row.status, row.fired_at, row.error = ("failed" if error else "fired"), done, error
            audit(
                s,
                "retrain.failed" if error else "retrain.fired",
                actor=ACTOR,
                now=done,
                request_id=request_id,
                hook=row.hook,
                message=error or f"retraining started via {row.hook}",
            )
            return _request_dict(row)

    def _get_request(self, request_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            return _request_dict(s.get(RetrainRequestRow, request_id))

    def drift_snapshot(self, s: Session) -> dict[str, Any] | None:
        row = s.get(ServerState, _DRIFT_STATE)
        return row.value if row is not None else None


def _alert_key(key: str) -> str:
    """Alert keys fit the column: long ones keep a readable head and a hash of the whole."""
    if len(key) <= 256:
        return key
    return key[:239] + "#" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return str(v)


def _alert_dict(a: FleetAlert) -> dict[str, Any]:
    return {
        "id": a.id,
        "key": a.key,
        "rule": a.rule,
        "severity": a.severity,
        "state": a.state,
        "message": a.message,
        "subject": a.subject,
        "value": a.value,
        "threshold": a.threshold,
        "first_at": a.first_at,
        "last_at": a.last_at,
        "resolved_at": a.resolved_at,
        "evaluations": a.evaluations,
        "evidence": a.evidence,
    }


def _request_dict(r: RetrainRequestRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "created_at": r.created_at,
        "model": r.model,
        "alert_key": r.alert_key,
        "reason": r.reason,
        "subject": r.subject,
        "evidence": r.evidence,
        "status": r.status,
        "decided_by": r.decided_by,
        "decided_at": r.decided_at,
        "fired_at": r.fired_at,
        "hook": r.hook,
        "error": r.error,
    }
