"""Signed, fresh director answers (Uptane's director role): what a device acts on is signed, numbered, dated.

The control plane signs every heartbeat answer's decision (the assignment and the commands) with its director
key (Ed25519). The answer carries the device id, a sequence number that only grows for that device, when it
was issued and when it expires. A device acts only on an answer that verifies against the director key it
pinned at enrollment, names it, has not expired, and is not older than the last answer it acted on; commands
run only from an answer strictly newer than the last one that ran commands, so a replayed answer neither
rolls a device back nor repeats a command, and a withheld answer cannot freeze a device past its expiry.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from edgefleet.errors import VerificationError
from edgefleet.protocol._device import Assignment, FederatedJob, SignedDirective

__all__ = [
    "Directive",
    "SignedDirective",
    "director_key_id",
    "new_director_key",
    "sign_directive",
    "verify_directive",
]


class Directive(BaseModel):
    """The decision in one director answer, as signed."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    seq: int = Field(ge=0, description="grows with every answer to this device")
    issued_at: datetime
    expires_at: datetime
    assignment: Assignment | None = None
    commands: list[str] = Field(default_factory=list)
    federated: FederatedJob | None = None


def new_director_key() -> tuple[bytes, bytes]:
    """A new Ed25519 director key pair: (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, pub


def _public(public_pem: bytes):  # noqa: ANN202 - cryptography type imported lazily
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError as e:
        raise VerificationError(
            f"the pinned director key is unreadable: {e}", hint="enroll the device again"
        ) from e
    if not isinstance(key, Ed25519PublicKey):
        raise VerificationError("the pinned director key is not Ed25519", hint="enroll the device again")
    return key


def director_key_id(public_pem: bytes) -> str:
    """The key id devices see: sha256 of the raw 32-byte public key."""
    from cryptography.hazmat.primitives import serialization

    raw = _public(public_pem).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@functools.lru_cache(maxsize=8)
def _private(private_pem: bytes):  # noqa: ANN202 - (key, key id); loaded once: every heartbeat answer signs
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise VerificationError("the director key is not Ed25519", hint="let the server create it")
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, hashlib.sha256(pub).hexdigest()


def sign_directive(private_pem: bytes, directive: Directive) -> SignedDirective:
    """Sign ``directive`` with the director's private key (PEM)."""
    key, key_id = _private(private_pem)
    payload = directive.model_dump_json()
    return SignedDirective(
        payload=payload, signature=base64.b64encode(key.sign(payload.encode())).decode(), key_id=key_id
    )


def verify_directive(
    public_pem: bytes,
    signed: SignedDirective,
    *,
    device_id: str,
    last_seq: int | None,
    now: datetime | None = None,
    max_clock_skew: timedelta = timedelta(minutes=5),
) -> Directive:
    """Check a director answer before acting on it; return its directive.

    ``last_seq`` is the sequence number of the last answer the device acted on: an older answer is refused
    (an equal one is the same answer again and is returned; the caller runs commands only from a newer one).

    Raises:
        VerificationError: wrong key or signature, another device's answer, expired, or older than ``last_seq``.
    """
    from cryptography.exceptions import InvalidSignature

    key = _public(public_pem)
    if signed.key_id != director_key_id(public_pem):
        raise VerificationError(
            "the director answer is signed by another key than the one pinned at enrollment",
            hint="a man in the middle, or the server's director key changed: enroll the device again if so",
        )
    try:
        key.verify(base64.b64decode(signed.signature, validate=True), signed.payload.encode())
    except (InvalidSignature, ValueError) as e:
        raise VerificationError(
            "the director answer's signature does not verify", hint="the answer was altered on its way"
        ) from e
    try:
        d = Directive.model_validate_json(signed.payload)
    except PydanticValidationError as e:
        raise VerificationError(
            f"the signed director answer is malformed: {e}", hint="upgrade the agent"
        ) from e
    if d.device_id != device_id:
        raise VerificationError(
            f"the director answer is for device {d.device_id!r}, not this one", hint="a replayed answer"
        )
    now = now or datetime.now(UTC)
    if d.expires_at <= now:
        raise VerificationError(
            f"the director answer expired at {d.expires_at.isoformat()}",
            hint="a replayed or withheld answer, or this device's clock is wrong",
        )
    if d.issued_at > now + max_clock_skew:
        raise VerificationError(
            "the director answer was issued in the future", hint="check this device's clock (NTP)"
        )
    if last_seq is not None and d.seq < last_seq:
        raise VerificationError(
            f"the director answer #{d.seq} is older than #{last_seq}, already acted on",
            hint="a replayed answer: ignored",
        )
    return d
