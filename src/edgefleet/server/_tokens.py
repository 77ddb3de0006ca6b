"""Operator tokens and enrollment tokens: issue, list, revoke (each change in the audit log).

The first admin token is made here too, at the first start of a server over an empty database, and
written to a 0600 file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from edgefleet._fs import atomic_write
from edgefleet.errors import InputError, NotFoundError
from edgefleet.server._audit import audit
from edgefleet.server._auth import Role, create_enrollment_token, create_operator_token, revoke_operator_token
from edgefleet.server._config import ServerConfig
from edgefleet.server._db import Database
from edgefleet.server._models import EnrollmentToken, OperatorToken

__all__ = ["TokenService"]

log = logging.getLogger(__name__)


class TokenService:
    """Credentials operators manage."""

    def __init__(self, db: Database, config: ServerConfig, *, clock: Callable[[], float]) -> None:
        self.db = db
        self.config = config
        self.clock = clock

    def bootstrap_admin(self) -> None:
        """Create the first admin token (in ``config.admin_token_path``) when no usable admin token exists."""
        cfg = self.config
        if not cfg.bootstrap_admin:
            return
        now = self.clock()
        with self.db.write() as s:
            self.db.lock(s, "bootstrap")
            has_admin = s.scalar(
                select(func.count())
                .select_from(OperatorToken)
                .where(OperatorToken.role == "admin", OperatorToken.revoked_at.is_(None))
            )
            if has_admin:
                return
            _, token = create_operator_token(
                s, name="admin", role=Role.admin, created_by="bootstrap", now=now
            )
            path = cfg.admin_token_path
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, (token + "\n").encode(), mode=0o600)
            audit(s, "token.created", actor="bootstrap", now=now, name="admin", role="admin", file=str(path))
            log.warning("created the first admin token in %s (mode 0600)", path)

    # --- operator tokens -----------------------------------------------------------------------

    def create_operator(self, *, name: str, role: str, actor: str) -> dict[str, Any]:
        now = self.clock()
        with self.db.write() as s:
            row, token = create_operator_token(s, name=name, role=Role[role], created_by=actor, now=now)
            audit(s, "token.created", actor=actor, now=now, token_id=row.id, name=name, role=role)
        return {"id": row.id, "name": row.name, "role": row.role, "token": token}

    def list_operators(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            return [
                {
                    "id": t.id,
                    "name": t.name,
                    "role": t.role,
                    "created_at": t.created_at,
                    "revoked_at": t.revoked_at,
                }
                for t in s.scalars(select(OperatorToken).order_by(OperatorToken.created_at))
            ]

    def revoke_operator(self, token_id: str, *, actor: str) -> dict[str, Any]:
        now = self.clock()
        with self.db.write() as s:
            row = revoke_operator_token(s, token_id, now)
            audit(s, "token.revoked", actor=actor, now=now, token_id=row.id, name=row.name)
        return {"id": row.id, "revoked_at": row.revoked_at}

    # --- enrollment tokens ---------------------------------------------------------------------

    def create_enrollment(
        self, *, tags: dict[str, str], expires_in_s: float | None, actor: str
    ) -> dict[str, Any]:
        cfg = self.config
        ttl = expires_in_s or cfg.enrollment_token_ttl_s
        if ttl > cfg.enrollment_token_max_ttl_s:
            raise InputError(
                f"expires_in_s {ttl:g} is above the {cfg.enrollment_token_max_ttl_s:g}s allowed",
                hint="create tokens shortly before the devices enroll",
            )
        now = self.clock()
        with self.db.write() as s:
            row, token = create_enrollment_token(s, tags=tags, ttl_s=ttl, created_by=actor, now=now)
            audit(
                s,
                "enrollment_token.created",
                actor=actor,
                now=now,
                token_id=row.id,
                tags=tags,
                expires_at=row.expires_at,
            )
        return {"id": row.id, "token": token, "tags": row.tags, "expires_at": row.expires_at}

    def list_enrollment(self) -> list[dict[str, Any]]:
        now = self.clock()
        with self.db.read() as s:
            return [
                {
                    "id": t.id,
                    "tags": t.tags,
                    "created_at": t.created_at,
                    "expires_at": t.expires_at,
                    "used_at": t.used_at,
                    "used_by": t.used_by,
                    "revoked": t.revoked,
                    "usable": not t.revoked and t.used_at is None and t.expires_at > now,
                }
                for t in s.scalars(select(EnrollmentToken).order_by(EnrollmentToken.created_at))
            ]

    def revoke_enrollment(self, token_id: str, *, actor: str) -> dict[str, Any]:
        now = self.clock()
        with self.db.write() as s:
            t = s.get(EnrollmentToken, token_id)
            if t is None:
                raise NotFoundError(
                    f"no enrollment token {token_id!r}", hint="list them: edgefleet devices tokens list"
                )
            t.revoked = True
            audit(s, "enrollment_token.revoked", actor=actor, now=now, token_id=t.id)
        return {"id": token_id, "revoked": True}
