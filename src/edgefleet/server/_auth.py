"""Credentials: enrollment tokens, per-device tokens and operator tokens with roles.

Tokens are 256-bit random strings; only their SHA-256 is stored. A fast hash is the right tool here
(unlike passwords, a token cannot be guessed from a dictionary), and it keeps a heartbeat's
authentication inside the single UPDATE that records it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from enum import IntEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.errors import AuthError, ForbiddenError, InputError, NotFoundError
from edgefleet.server._models import EnrollmentToken, OperatorToken

__all__ = [
    "Role",
    "Operator",
    "hash_token",
    "new_token",
    "create_operator_token",
    "create_enrollment_token",
    "authenticate_operator",
    "bearer",
]

DEVICE_PREFIX = "efd_"
OPERATOR_PREFIX = "efo_"
ENROLL_PREFIX = "efe_"


class Role(IntEnum):
    """Operator roles; each includes the ones below it."""

    viewer = 1
    deployer = 2
    admin = 3

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value]
        except KeyError:
            raise InputError(f"unknown role {value!r}", hint="use one of: viewer, deployer, admin") from None


@dataclass(frozen=True)
class Operator:
    """The authenticated caller of an operator endpoint."""

    token_id: str
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"operator:{self.name}"

    def require(self, role: Role) -> None:
        if self.role < role:
            raise ForbiddenError(
                f"this call needs the {role.name} role; token {self.name!r} has {self.role.name}",
                hint="ask an admin for a token with that role (edgefleet server token create --role ...)",
            )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def short_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(6)


def bearer(credentials: str | None, *, hint: str = "send 'Authorization: Bearer <token>'") -> str:
    """The token of an ``Authorization: Bearer <token>`` header (None or empty: the header is missing or malformed)."""
    if not credentials:
        raise AuthError("missing or malformed Authorization header", hint=hint)
    if len(credentials) > 512:
        raise AuthError("the bearer token is too long to be valid", hint="check the token you send")
    return credentials


def create_operator_token(
    session: Session, *, name: str, role: Role, created_by: str | None = None, now: float | None = None
) -> tuple[OperatorToken, str]:
    """Store a new operator token; the plain token is returned once and never stored."""
    if not name or len(name) > 128:
        raise InputError("an operator token needs a name of 1-128 characters", hint="pass --name")
    token = new_token(OPERATOR_PREFIX)
    row = OperatorToken(
        id=short_id("op-"),
        name=name,
        role=role.name,
        token_hash=hash_token(token),
        created_at=now or time.time(),
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row, token


def create_enrollment_token(
    session: Session,
    *,
    tags: dict[str, str],
    ttl_s: float,
    created_by: str | None = None,
    now: float | None = None,
) -> tuple[EnrollmentToken, str]:
    now = now or time.time()
    token = new_token(ENROLL_PREFIX)
    row = EnrollmentToken(
        id=short_id("en-"),
        token_hash=hash_token(token),
        tags=dict(tags),
        created_at=now,
        expires_at=now + ttl_s,
        created_by=created_by,
        revoked=False,
    )
    session.add(row)
    session.flush()
    return row, token


def authenticate_operator(session: Session, token: str) -> Operator:
    if not token.startswith(OPERATOR_PREFIX):
        raise AuthError(
            "this endpoint needs an operator token (efo_...)",
            hint="device tokens cannot call operator endpoints; use an operator token",
        )
    row = session.execute(
        select(OperatorToken).where(OperatorToken.token_hash == hash_token(token))
    ).scalar_one_or_none()
    if row is None:
        raise AuthError("unknown operator token", hint="check the token, or ask an admin for a new one")
    if row.revoked_at is not None:
        raise AuthError("this operator token was revoked", hint="ask an admin for a new token")
    return Operator(token_id=row.id, name=row.name, role=Role[row.role])


def revoke_operator_token(session: Session, token_id: str, now: float) -> OperatorToken:
    row = session.get(OperatorToken, token_id)
    if row is None:
        raise NotFoundError(f"no operator token {token_id!r}", hint="list them with GET /v1/operator-tokens")
    if row.revoked_at is None:
        row.revoked_at = now
    return row
