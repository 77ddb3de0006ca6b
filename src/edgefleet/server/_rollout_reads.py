"""How rollouts read: the API's description of a rollout, and its waves' history for the dashboard.

Owned by the rollout engine (``_rollouts.RolloutEngine.describe``, ``list`` and ``history``); read-only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.server._models import AuditEntry, Release, ReleaseVariant, Rollout, RolloutDevice

__all__ = ["FINAL_STATES", "describe_rollout", "wave_history"]

#: States a rollout does not leave.
FINAL_STATES = ("completed", "aborted", "rolled_back")


def describe_rollout(s: Session, r: Rollout, *, devices: bool = False) -> dict[str, Any]:
    """A rollout as the API shows it: its settings, state, member counts, evaluation (and devices)."""
    rel = s.get(Release, r.release_id)
    counts = dict(
        s.execute(
            select(RolloutDevice.status, func.count())
            .where(RolloutDevice.rollout_id == r.id)
            .group_by(RolloutDevice.status)
        ).all()
    )
    out: dict[str, Any] = {
        "id": r.id,
        "name": rel.name,
        "version": rel.version,
        "selector": r.selector,
        "waves": r.waves,
        "soak_s": r.soak_s,
        "policy": r.policy,
        "on_fail": r.on_fail,
        "force": bool(r.force),
        "gates": r.gates,
        "device_gates": r.device_gates,
        "state": r.state,
        "wave": r.wave_index + 1,
        "wave_percent": r.waves[r.wave_index],
        "wave_started_at": r.wave_started_at,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "finished_at": r.finished_at,
        "created_by": r.created_by,
        "reason": r.reason,
        "members": {k: int(v) for k, v in counts.items()},
        "evaluation": r.evaluation,
        "baseline": r.baseline,
    }
    if devices:
        rows = s.execute(
            select(RolloutDevice, ReleaseVariant.variant)
            .outerjoin(ReleaseVariant, ReleaseVariant.id == RolloutDevice.variant_id)
            .where(RolloutDevice.rollout_id == r.id)
            .order_by(RolloutDevice.wave, RolloutDevice.device_id)
            .limit(1000)
        ).all()
        out["devices"] = [
            {
                "device_id": rd.device_id,
                "status": rd.status,
                "wave": None if rd.wave is None else rd.wave + 1,
                "variant": variant,
                "prev_version": rd.prev_version,
                "admitted_at": rd.admitted_at,
                "reason": rd.reason if rd.status in ("does_not_fit", "parked") else None,
            }
            for rd, variant in rows
        ]
        out["does_not_fit"] = [
            {"device_id": x["device_id"], "reason": x["reason"]}
            for x in out["devices"]
            if x["status"] == "does_not_fit"
        ]
    return out


def wave_history(s: Session, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Described rollouts (``describe_rollout``) with, per wave, its state and the gate figures that decided it.

    A decided wave shows the evaluation recorded when it passed or failed (audit log); the current wave
    its live evaluation.
    """
    ids = [r["id"] for r in items]
    decided: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}
    q = (
        select(AuditEntry)
        .where(
            AuditEntry.rollout_id.in_(ids),
            AuditEntry.action.in_(("rollout.wave_passed", "rollout.gate_failed")),
        )
        .order_by(AuditEntry.id)
    )
    for a in s.scalars(q):
        wave = (a.details or {}).get("wave")
        if isinstance(wave, int):
            status = "passed" if a.action == "rollout.wave_passed" else "failed"
            decided[(a.rollout_id, wave)] = (status, (a.details or {}).get("evaluation") or {})
    out = []
    for r in items:
        waves = []
        for i, pct in enumerate(r["waves"]):
            n = i + 1
            if (r["id"], n) in decided:
                status, ev = decided[(r["id"], n)]
            elif n == r["wave"] and r["state"] not in FINAL_STATES:
                ev = r.get("evaluation") or {}
                status = "current"
            else:
                status, ev = ("pending" if n > r["wave"] else "skipped"), {}
            waves.append(
                {
                    "wave": n,
                    "percent": pct,
                    "status": status,
                    "verdict": ev.get("status"),
                    "counts": ev.get("counts") or {},
                    "waiting_for": ev.get("waiting_for") or [],
                    "held": ev.get("held") or {},
                    "gates": [
                        {k: g.get(k) for k in ("name", "status", "value", "threshold", "reference", "detail")}
                        for g in ev.get("gates") or []
                    ],
                }
            )
        out.append(
            {
                k: r.get(k)
                for k in (
                    "id",
                    "name",
                    "version",
                    "selector",
                    "state",
                    "wave",
                    "policy",
                    "reason",
                    "created_at",
                    "updated_at",
                    "members",
                )
            }
            | {"waves": waves}
        )
    return out
