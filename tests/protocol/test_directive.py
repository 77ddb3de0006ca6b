"""Signed director answers: a forged, replayed, expired or foreign answer is refused."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.errors import VerificationError
from edgefleet.protocol import Assignment
from edgefleet.protocol._directive import (
    Directive,
    SignedDirective,
    director_key_id,
    new_director_key,
    sign_directive,
    verify_directive,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys():
    return new_director_key(), new_director_key()


def _directive(seq=5, *, device="dev-1", expires=NOW + timedelta(minutes=10), commands=(), version="1.1.0"):
    a = Assignment(
        name="digits",
        version=version,
        variant="cpu",
        target_path=f"digits/{version}/cpu.tar",
        length=10,
        hashes={"sha256": "0" * 64},
    )
    return Directive(
        device_id=device, seq=seq, issued_at=NOW, expires_at=expires, assignment=a, commands=list(commands)
    )


def test_a_good_answer_verifies_and_round_trips(keys):
    (priv, pub), _ = keys
    d = _directive(commands=["rollback"])
    s = sign_directive(priv, d)
    assert s.key_id == director_key_id(pub)
    got = verify_directive(
        pub, SignedDirective.model_validate_json(s.model_dump_json()), device_id="dev-1", last_seq=4, now=NOW
    )
    assert got == d
    # the same answer again (seq equal) is not refused: the caller runs commands only from a newer one
    assert verify_directive(pub, s, device_id="dev-1", last_seq=5, now=NOW).seq == 5


def test_replayed_older_answer_is_refused(keys):
    (priv, pub), _ = keys
    old = sign_directive(priv, _directive(seq=3, version="1.0.0"))
    with pytest.raises(VerificationError, match="older than #4"):
        verify_directive(pub, old, device_id="dev-1", last_seq=4, now=NOW)


def test_expired_answer_is_refused(keys):
    (priv, pub), _ = keys
    s = sign_directive(priv, _directive(expires=NOW))
    with pytest.raises(VerificationError, match="expired"):
        verify_directive(pub, s, device_id="dev-1", last_seq=None, now=NOW)
    later = sign_directive(priv, _directive(expires=NOW + timedelta(seconds=1)))
    assert verify_directive(pub, later, device_id="dev-1", last_seq=None, now=NOW)


def test_answer_signed_by_another_key_is_refused(keys):
    (_, pub), (other_priv, other_pub) = keys
    s = sign_directive(other_priv, _directive())
    with pytest.raises(VerificationError, match="another key"):
        verify_directive(pub, s, device_id="dev-1", last_seq=None, now=NOW)
    # claiming the pinned key id does not help: the signature is checked against the pinned key
    forged = s.model_copy(update={"key_id": director_key_id(pub)})
    with pytest.raises(VerificationError, match="does not verify"):
        verify_directive(pub, forged, device_id="dev-1", last_seq=None, now=NOW)


def test_altered_payload_is_refused(keys):
    (priv, pub), _ = keys
    s = sign_directive(priv, _directive(version="1.1.0"))
    tampered = s.model_copy(update={"payload": s.payload.replace("1.1.0", "1.0.0")})
    with pytest.raises(VerificationError, match="does not verify"):
        verify_directive(pub, tampered, device_id="dev-1", last_seq=None, now=NOW)
    garbage = s.model_copy(update={"signature": base64.b64encode(b"x" * 64).decode()})
    with pytest.raises(VerificationError, match="does not verify"):
        verify_directive(pub, garbage, device_id="dev-1", last_seq=None, now=NOW)
    not_b64 = s.model_copy(update={"signature": "!!"})
    with pytest.raises(VerificationError, match="does not verify"):
        verify_directive(pub, not_b64, device_id="dev-1", last_seq=None, now=NOW)


def test_another_devices_answer_is_refused(keys):
    (priv, pub), _ = keys
    s = sign_directive(priv, _directive(device="dev-2"))
    with pytest.raises(VerificationError, match="dev-2"):
        verify_directive(pub, s, device_id="dev-1", last_seq=None, now=NOW)


def test_answer_from_the_future_is_refused(keys):
    (priv, pub), _ = keys
    d = _directive().model_copy(
        update={"issued_at": NOW + timedelta(hours=1), "expires_at": NOW + timedelta(hours=2)}
    )
    with pytest.raises(VerificationError, match="future"):
        verify_directive(pub, sign_directive(priv, d), device_id="dev-1", last_seq=None, now=NOW)
