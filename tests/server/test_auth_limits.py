"""Credential rules at their boundaries: header length, token name length, role order, revocation, expiry.

Straight against ``server._auth`` on an in-memory SQLite session (the HTTP routes are covered by
test_auth.py), so each limit sits exactly on its edge.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from edgefleet.errors import AuthError, ForbiddenError, InputError, NotFoundError
from edgefleet.server._auth import (
    ENROLL_PREFIX,
    OPERATOR_PREFIX,
    Operator,
    Role,
    authenticate_operator,
    bearer,
    create_enrollment_token,
    create_operator_token,
    hash_token,
    new_token,
    revoke_operator_token,
    short_id,
)
from edgefleet.server._models import Base, OperatorToken


@pytest.fixture
def session():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


@given(length=st.integers(0, 600))
def test_bearer_token_length_limit_is_512(length):
    token = "t" * length
    if length == 0:
        with pytest.raises(AuthError, match="missing or malformed"):
            bearer(token)
    elif length <= 512:
        assert bearer(token) == token
    else:
        with pytest.raises(AuthError, match="too long"):
            bearer(token)


def test_missing_bearer_is_refused_with_the_given_hint():
    with pytest.raises(AuthError) as e:
        bearer(None, hint="send the device token")
    assert e.value.hint == "send the device token"


@pytest.mark.parametrize(("length", "ok"), [(0, False), (1, True), (128, True), (129, False)])
def test_operator_token_name_length_is_1_to_128(session, length, ok):
    if ok:
        row, token = create_operator_token(session, name="n" * length, role=Role.viewer, now=5.0)
        assert row.name == "n" * length and row.created_at == 5.0
    else:
        with pytest.raises(InputError, match="1-128 characters"):
            create_operator_token(session, name="n" * length, role=Role.viewer)


@given(have=st.sampled_from(list(Role)), need=st.sampled_from(list(Role)))
def test_a_role_includes_exactly_the_roles_below_it(have, need):
    op = Operator(token_id="op-1", name="alice", role=have)
    if have >= need:
        op.require(need)
    else:
        with pytest.raises(ForbiddenError, match=f"needs the {need.name} role"):
            op.require(need)


def test_roles_parse_by_name_only():
    assert [Role.parse(n) for n in ("viewer", "deployer", "admin")] == [
        Role.viewer,
        Role.deployer,
        Role.admin,
    ]
    for bad in ("root", "Admin", "1", ""):
        with pytest.raises(InputError, match="unknown role"):
            Role.parse(bad)
    assert Role.viewer < Role.deployer < Role.admin


def test_tokens_are_random_prefixed_and_stored_only_as_their_sha256(session):
    row, token = create_operator_token(session, name="ci", role=Role.deployer, created_by="admin")
    assert token.startswith(OPERATOR_PREFIX) and len(token) == len(OPERATOR_PREFIX) + 43  # 256 bits
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() == hash_token(token)
    assert row.role == "deployer" and row.created_by == "admin" and row.revoked_at is None
    assert token not in {str(v) for v in vars(row).values()}
    assert new_token("x_") != new_token("x_")
    assert re.fullmatch(r"op-[0-9a-f]{12}", short_id("op-")) and short_id() != short_id()
    assert row.id.startswith("op-")


def test_authenticate_operator(session):
    row, token = create_operator_token(session, name="ops", role=Role.admin)
    op = authenticate_operator(session, token)
    assert (op.token_id, op.name, op.role, op.actor) == (row.id, "ops", Role.admin, "operator:ops")
    with pytest.raises(AuthError, match="needs an operator token"):
        authenticate_operator(session, "efd_" + token[len(OPERATOR_PREFIX) :])
    with pytest.raises(AuthError, match="unknown operator token"):
        authenticate_operator(session, token + "x")


def test_revocation_is_final_and_keeps_its_first_time(session):
    row, token = create_operator_token(session, name="ops", role=Role.admin)
    assert revoke_operator_token(session, row.id, 100.0).revoked_at == 100.0
    assert revoke_operator_token(session, row.id, 200.0).revoked_at == 100.0
    with pytest.raises(AuthError, match="revoked"):
        authenticate_operator(session, token)
    with pytest.raises(NotFoundError):
        revoke_operator_token(session, "op-missing", 1.0)
    assert session.execute(select(OperatorToken)).scalar_one().revoked_at == 100.0


def test_other_tokens_are_unaffected_by_a_revocation(session):
    a, _ = create_operator_token(session, name="a", role=Role.viewer)
    _, token_b = create_operator_token(session, name="b", role=Role.viewer)
    revoke_operator_token(session, a.id, 1.0)
    assert authenticate_operator(session, token_b).name == "b"


@given(ttl=st.floats(1, 1e6), now=st.floats(1, 1e9))
def test_enrollment_token_expires_ttl_after_creation(ttl, now):
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        tags = {"site": "a"}
        row, token = create_enrollment_token(s, tags=tags, ttl_s=ttl, created_by="op", now=now)
        tags["site"] = "changed"
        assert token.startswith(ENROLL_PREFIX) and row.token_hash == hash_token(token)
        assert row.created_at == now and row.expires_at == now + ttl
        assert row.tags == {"site": "a"} and row.revoked is False and row.created_by == "op"
    engine.dispose()


def test_created_tokens_are_in_the_database_when_create_returns(session):
    """Written (flushed) before returning: raw SQL on the same transaction sees them, no autoflush needed."""
    from sqlalchemy import text

    session.autoflush = False
    create_operator_token(session, name="ops", role=Role.admin)
    create_enrollment_token(session, tags={}, ttl_s=60.0)
    conn = session.connection()
    assert conn.execute(text("SELECT COUNT(*) FROM operator_tokens")).scalar_one() == 1
    assert conn.execute(text("SELECT COUNT(*) FROM enrollment_tokens")).scalar_one() == 1
