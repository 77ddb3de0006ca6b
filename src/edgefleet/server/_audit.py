"""The audit log: one writer (``audit``) for every transition and operator action, and its readers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.errors import NotFoundError
from edgefleet.server._db import Database
from edgefleet.server._models import AuditEntry, Rollout

__all__ = ["AuditLog", "audit"]


def audit(
    s: Session,
    action: str,
    *,
    actor: str,
    now: float,
    rollout_id: str | None = None,
    device_id: str | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    **details: Any,
) -> None:
    """Add one audit entry to ``s`` (committed with the change it records)."""
    s.add(
        AuditEntry(
            at=now,
            actor=actor,
            action=action,
            rollout_id=rollout_id,
            device_id=device_id,
            from_state=from_state,
            to_state=to_state,
            details=details,
        )
    )


class AuditLog:
    """Reads of the audit log for the operator API."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def entries(self, *, since_id: int = 0, action: str | None = None, limit: int) -> list[dict[str, Any]]:
        """Entries after ``since_id``, oldest first, optionally of one action."""
        with self.db.read() as s:
            q = select(AuditEntry).where(AuditEntry.id > since_id).order_by(AuditEntry.id).limit(limit)
            if action:
                q = q.where(AuditEntry.action == action)
            return [a.to_dict() for a in s.scalars(q)]

    def of_rollout(self, rollout_id: str, *, limit: int) -> list[dict[str, Any]]:
        """One rollout's entries, oldest first.

        Raises:
            NotFoundError: no such rollout.
        """
        with self.db.read() as s:
            if s.get(Rollout, rollout_id) is None:
                raise NotFoundError(
                    f"no rollout {rollout_id!r}", hint="list them with: edgefleet rollout list"
                )
            q = (
                select(AuditEntry)
                .where(AuditEntry.rollout_id == rollout_id)
                .order_by(AuditEntry.id)
                .limit(limit)
            )
            return [a.to_dict() for a in s.scalars(q)]
