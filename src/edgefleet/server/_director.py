"""The device-facing side: enrollment, heartbeats (the director's answer), telemetry ingest.

A heartbeat is recorded by ``_heartbeat.HeartbeatWriter`` with one statement, which also returns the
assignment the rollout engine set on the device's row. The assignment itself is built from immutable
rows (variants, a rollout's device gates) cached in memory, so the hot path makes one round trip to the
database.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from starlette.concurrency import run_in_threadpool

from edgefleet.errors import (
    AuthError,
    DeviceRevokedError,
    EdgefleetError,
    ForbiddenError,
    NotFoundError,
    ValidationError,
)
from edgefleet.protocol import (
    Assignment,
    EnrollRequest,
    EnrollResponse,
    GateThresholds,
    Heartbeat,
    RenewRequest,
    RenewResponse,
    TelemetryBatch,
)
from edgefleet.server._audit import audit
from edgefleet.server._auth import DEVICE_PREFIX, bearer, hash_token, new_token
from edgefleet.server._blobs import BlobStore
from edgefleet.server._config import ServerConfig
from edgefleet.server._db import Database
from edgefleet.server._device_health import DeviceHealth
from edgefleet.server._heartbeat import HeartbeatWriter, failure_of
from edgefleet.server._heartbeat_batch import HeartbeatBatcher
from edgefleet.server._identity import ServerIdentity, device_of_cert
from edgefleet.server._models import (
    AuditEntry,
    Device,
    EnrollmentToken,
    Release,
    ReleaseVariant,
    Rollout,
    TelemetryBatchRow,
    TelemetryWindowRow,
)
from edgefleet.server._schemas import _check_tags
from edgefleet.server._selector import device_attrs
from edgefleet.server._update_policies import UpdatePolicies

__all__ = ["DeviceCredential", "DeviceService"]

log = logging.getLogger(__name__)

D = Device.__table__

_REVOKED_HINT = "an operator revoked this device: enroll it again with a new enrollment token"


@dataclass(frozen=True)
class DeviceCredential:
    """How a request authenticated as a device: its verified client certificate, or its bearer token."""

    token: str | None = None
    cert_device: str | None = None


class DeviceService:
    """Enrollment, heartbeats and telemetry for one server process."""

    def __init__(
        self,
        db: Database,
        config: ServerConfig,
        blobs: BlobStore,
        *,
        clock: Callable[[], float] = time.time,
        root_json: Callable[[], Path | None] | None = None,
        identity: ServerIdentity | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.blobs = blobs
        self.clock = clock
        self._root_json = root_json or (lambda: None)
        self._assign_cache: dict[tuple[int, str | None], dict[str, Any]] = {}
        self._cache_lock = threading.Lock()
        self._rng = random.Random()
        self._window_cls = _telemetry_window_class()
        self._beats = HeartbeatWriter(db)
        batch = config.heartbeat_batch_max if db.dialect == "postgresql" else 0
        self._batcher = HeartbeatBatcher(self._beats, max_batch=batch) if batch else None
        self.identity = identity or ServerIdentity(config)
        #: update policies per device group (``_update_policies``); set by ``create_app``
        self.update_policies: UpdatePolicies | None = None
        self._force_cache: dict[str, bool] = {}
        #: running federated jobs (``_fl_jobs``); set by ``create_app``
        self.fl_jobs: Any = None

    # --- enrollment ----------------------------------------------------------------------------

    def enroll(self, req: EnrollRequest, *, repository_url: str) -> EnrollResponse:
        now = self.clock()
        hw = req.hardware
        try:
            claimed = _check_tags(dict(hw.tags))
        except ValueError as e:
            raise ValidationError(f"hardware.tags: {e}", hint="fix the tags the device reports") from e
        # Core statements, not ORM objects: the ORM's unit of work cost more CPU than the whole transaction
        t = EnrollmentToken.__table__
        with self.db.write() as s:
            tok = s.execute(
                select(t.c.id, t.c.tags, t.c.revoked, t.c.used_at, t.c.used_by, t.c.expires_at).where(
                    t.c.token_hash == hash_token(req.token)
                )
            ).one_or_none()
            if tok is None:
                raise AuthError(
                    "unknown enrollment token",
                    hint="ask an operator for one: edgefleet devices tokens create",
                )
            if tok.revoked:
                raise AuthError("this enrollment token was revoked", hint="ask an operator for a new one")
            if tok.used_at is not None:
                raise AuthError(
                    f"this enrollment token was already used (by device {tok.used_by}); tokens are one-time",
                    hint="create one enrollment token per device",
                )
            if tok.expires_at <= now:
                raise AuthError(
                    f"this enrollment token expired at {_iso(tok.expires_at)}",
                    hint="ask an operator for a new one",
                )
            for k, v in tok.tags.items():
                if k in claimed and claimed[k] != v:
                    raise ForbiddenError(
                        f"the enrollment token is scoped to {k}={v}, but the device claims {k}={claimed[k]}",
                        hint="use a token created for this device's group, or fix the device's tags",
                    )
            device_id = "dev-" + secrets.token_hex(8)
            cert = self.identity.sign_csr(req.csr, device_id) if req.csr else None
            res = s.execute(
                update(t)
                .where(t.c.id == tok.id, t.c.used_at.is_(None))
                .values(used_at=now, used_by=device_id)
            )
            if res.rowcount != 1:  # another request used it between our read and this write
                raise AuthError(
                    "this enrollment token was already used; tokens are one-time",
                    hint="create one enrollment token per device",
                )
            token = new_token(DEVICE_PREFIX)
            tags = {**claimed, **tok.tags}
            s.execute(
                insert(D).values(
                    id=device_id,
                    name=req.name,
                    token_hash=hash_token(token),
                    revoked=False,
                    enrollment_token_id=tok.id,
                    enrolled_at=now,
                    last_seen=now,
                    device_class=hw.device_class,
                    arch=hw.arch,
                    hardware=hw.model_dump(mode="json", exclude={"tags"}),
                    tags=tags,
                    state="enrolled",
                    director_seq=0,
                    cert_expires=cert[2] if cert else None,
                    **DeviceHealth.ZERO,
                )
            )
            s.execute(
                insert(AuditEntry.__table__).values(
                    at=now,
                    actor=f"enrollment-token:{tok.id}",
                    action="device.enrolled",
                    device_id=device_id,
                    details={"device_class": hw.device_class, "tags": tags},
                )
            )
        return EnrollResponse(
            device_id=device_id,
            device_token=token,
            poll_interval_s=self._poll_interval(),
            repository_url=self.config.repository_url or repository_url,
            root_json_sha256=self._root_sha256(),
            device_cert=cert[0] if cert else None,
            ca_cert=cert[1] if cert else None,
            director_key=self.identity.director_public.decode(),
        )

    def renew(self, device_id: str, cred: DeviceCredential, req: RenewRequest) -> RenewResponse:
        """A new certificate for the device's new key (authenticated as that device)."""
        self.authenticate(device_id, cred)
        cert_pem, _, expires = self.identity.sign_csr(req.csr, device_id)
        now = self.clock()
        with self.db.write() as s:
            s.execute(update(D).where(D.c.id == device_id).values(cert_expires=expires))
            audit(s, "device.certificate_renewed", actor=f"device:{device_id}", now=now, device_id=device_id)
        return RenewResponse(device_cert=cert_pem)

    def _root_sha256(self) -> str | None:
        p = self._root_json()
        if p is None or not p.is_file():
            return None
        return hashlib.sha256(p.read_bytes()).hexdigest()

    def _poll_interval(self) -> float:
        j = self.config.poll_jitter
        return round(self.config.poll_interval_s * (1 + self._rng.uniform(-j, j)), 3)

    # --- authentication ------------------------------------------------------------------------

    def credential(self, device_id: str, token: str | None, cert_der: bytes | None) -> DeviceCredential:
        """What a request presents as ``device_id``'s credential, under ``config.device_auth``.

        A verified client certificate must name the device of the URL; without one (``either``) the bearer
        device token is the credential. Whether the device may still act is checked against its row.
        """
        mode = self.config.device_auth
        if cert_der is not None and mode != "token":
            cn = device_of_cert(cert_der)
            if cn != device_id:
                raise ForbiddenError(
                    f"this client certificate belongs to {cn!r}, not to device {device_id!r}",
                    hint="a device may only read and write its own records",
                )
            return DeviceCredential(cert_device=cn)
        if mode == "mtls":
            raise AuthError(
                "this server requires a device client certificate (mutual TLS)",
                hint="connect with the certificate the device got at enrollment; re-enroll if it has none",
            )
        token = bearer(token)
        if not token.startswith(DEVICE_PREFIX):
            raise AuthError("a device token (efd_...) is required here", hint="send the device's own token")
        return DeviceCredential(token=token)

    def _diagnose(self, device_id: str, cred: DeviceCredential) -> EdgefleetError:
        """Why a device credential did not authenticate for ``device_id`` (slow path, errors only)."""
        if cred.token is None:
            with self.db.read() as s:
                revoked = s.scalar(select(Device.revoked).where(Device.id == device_id))
            if revoked is None:
                return NotFoundError(
                    f"unknown device {device_id!r}",
                    hint="enroll the device first (it may have been removed by an operator)",
                )
            return DeviceRevokedError("this device was revoked", hint=_REVOKED_HINT)
        token = cred.token
        with self.db.read() as s:
            owner = s.execute(
                select(Device.id, Device.revoked).where(Device.token_hash == hash_token(token))
            ).one_or_none()
            if owner is not None and owner.id != device_id:
                return ForbiddenError(
                    "this device token belongs to another device",
                    hint="a device may only read and write its own records",
                )
            if owner is not None and owner.revoked:
                return DeviceRevokedError("this device's token was revoked", hint=_REVOKED_HINT)
            exists = s.scalar(select(Device.id).where(Device.id == device_id)) is not None
        if not exists:
            return NotFoundError(
                f"unknown device {device_id!r}",
                hint="enroll the device first (it may have been removed by an operator)",
            )
        return AuthError("invalid device token", hint="re-enroll the device if it lost its credentials")

    def authenticate(self, device_id: str, cred: DeviceCredential | str) -> None:
        """Check that ``cred`` (or a bare token) authenticates the unrevoked ``device_id`` (reads, telemetry)."""
        if isinstance(cred, str):
            cred = self.credential(device_id, cred, None)
        where = [Device.id == device_id, Device.revoked.is_(False)]
        if cred.token is not None:
            where.append(Device.token_hash == hash_token(cred.token))
        with self.db.read() as s:
            ok = s.scalar(select(Device.id).where(*where))
        if ok is None:
            raise self._diagnose(device_id, cred)

    # --- heartbeat -----------------------------------------------------------------------------

    def heartbeat(self, device_id: str, cred: DeviceCredential | str, hb: Heartbeat) -> dict[str, Any]:
        """Record a heartbeat and return the director's answer (``HeartbeatResponse`` as JSON data).

        The decision (assignment and commands) is also signed with the director key, numbered with the
        device's next sequence number and dated (``signed``); an agent acts on that alone.
        """
        if isinstance(cred, str):
            cred = self.credential(device_id, cred, None)
        now = self.clock()
        row, done = self._beats.record(device_id, cred.token, hb, now)
        if row is None:
            raise self._diagnose(device_id, cred)
        assignment = self._assignment_of(row)
        wait = self._policy_hold(device_id, row, hb, assignment, now) if assignment else None
        return self._answer(device_id, row, done, now, None if wait else assignment, wait, hb)

    async def aheartbeat(self, device_id: str, cred: DeviceCredential, hb: Heartbeat) -> dict[str, Any]:
        """``heartbeat`` for the event loop: on PostgreSQL the write joins the next coalesced batch
        (``HeartbeatBatcher``); database reads that are not cached run in the thread pool."""
        if self._batcher is None:
            return await run_in_threadpool(self.heartbeat, device_id, cred, hb)
        now = self.clock()
        row, done = await self._batcher.record(self._beats.prepare(device_id, cred.token, hb, now))
        if row is None:
            raise await run_in_threadpool(self._diagnose, device_id, cred)
        variant_id, rollout_id = row[0], row[1]
        if variant_id is None:
            assignment = None
        elif (variant_id, rollout_id) in self._assign_cache:
            assignment = self._assign_cache[(variant_id, rollout_id)]
        else:
            assignment = await run_in_threadpool(self.assignment, variant_id, rollout_id)
        if self.fl_jobs is not None and self.fl_jobs.stale():  # the running jobs' list, reloaded off the loop
            await run_in_threadpool(self.fl_jobs.reload)
        wait = None
        if assignment is not None and rollout_id is not None and self.update_policies is not None:
            if self.update_policies.fresh() and rollout_id in self._force_cache:  # no database read
                wait = self._policy_hold(device_id, row, hb, assignment, now)
            else:
                wait = await run_in_threadpool(self._policy_hold, device_id, row, hb, assignment, now)
        return self._answer(device_id, row, done, now, None if wait else assignment, wait, hb)

    def _assignment_of(self, row: Any) -> dict[str, Any] | None:
        return self.assignment(row[0], row[1]) if row[0] is not None else None

    def _policy_hold(
        self, device_id: str, row: Any, hb: Heartbeat, assignment: dict[str, Any], now: float
    ) -> str | None:
        """Why the device's update policy holds back this rollout assignment now (None: it does not).

        Only rollout assignments wait, never a forced rollout's, nor one the device already runs.
        """
        rollout_id, policies = row[1], self.update_policies
        if policies is None or rollout_id is None or not policies.compiled() or self._forced(rollout_id):
            return None
        if hb.active is not None and hb.active.sha256 == assignment["hashes"].get("sha256"):
            return None
        tags = row[8]
        active = (hb.active.name, hb.active.version) if hb.active else None

        def attrs() -> dict[str, str | None]:
            return device_attrs(
                device_id=device_id,
                name=row[5],
                device_class=row[6],
                arch=row[7],
                tags=json.loads(tags) if isinstance(tags, str) else tags,
                active_version=hb.active.version if hb.active else None,
                active_name=hb.active.name if hb.active else None,
            )

        hold = policies.hold(
            attrs,
            version=assignment["version"],
            resources={"metered": hb.resources.metered, "power_source": hb.resources.power_source},
            now=now,
            device=(device_id, (*row[5:8], tags if isinstance(tags, str) else repr(tags), active)),
        )
        return None if hold is None else f"{assignment['name']} {assignment['version']} waits: {hold.message}"

    def _forced(self, rollout_id: str) -> bool:
        """Was the rollout created with ``force`` (cached: the flag never changes)."""
        forced = self._force_cache.get(rollout_id)
        if forced is None:
            with self.db.read() as s:
                forced = bool(s.scalar(select(Rollout.force).where(Rollout.id == rollout_id)))
            if len(self._force_cache) > 10_000:
                self._force_cache.clear()
            self._force_cache[rollout_id] = forced
        return forced

    def _answer(
        self,
        device_id: str,
        row: Any,
        done: bool,
        now: float,
        assignment: dict[str, Any] | None,
        wait: str | None = None,
        hb: Heartbeat | None = None,
    ) -> dict[str, Any]:
        command, seq = row[2], row[4]
        commands = [command] if command is not None and not done else []
        fl = self.fl_jobs.for_device(device_id, row, hb, now) if self.fl_jobs is not None and hb else None
        out = {
            "assignment": assignment,
            "poll_interval_s": self._poll_interval(),
            "commands": commands,
            "server_time": datetime.fromtimestamp(now, UTC).isoformat(),
            "signed": self.identity.sign(device_id, int(seq), now, assignment, commands, fl),
        }
        if wait is not None:
            out["wait_reason"] = wait
        if fl is not None:
            out["federated"] = fl
        return out

    def close(self) -> None:
        """Write the heartbeats still queued and stop the writer thread (PostgreSQL)."""
        if self._batcher is not None:
            self._batcher.close()

    def assignment(self, variant_id: int, rollout_id: str | None) -> dict[str, Any] | None:
        """The ``Assignment`` (as JSON data) of a variant in a rollout (cached: its rows never change)."""
        key = (variant_id, rollout_id)
        cached = self._assign_cache.get(key)
        if cached is not None:
            return cached
        with self.db.read() as s:
            row = s.execute(
                select(ReleaseVariant, Release)
                .join(Release, Release.id == ReleaseVariant.release_id)
                .where(ReleaseVariant.id == variant_id)
            ).one_or_none()
            if row is None:
                return None
            v, rel = row
            gates = GateThresholds()
            if rollout_id is not None:
                r = s.get(Rollout, rollout_id)
                if r is not None and r.device_gates:
                    gates = GateThresholds.model_validate(r.device_gates)
            budgets = v.budgets or {}
            if gates.latency_budget_ms is None and budgets.get("latency_p95_ms") is not None:
                gates.latency_budget_ms = budgets["latency_p95_ms"]
            if gates.memory_budget_mb is None and budgets.get("ram_mb") is not None:
                gates.memory_budget_mb = budgets["ram_mb"]
            out = Assignment(
                rollout_id=rollout_id,
                name=rel.name,
                version=rel.version,
                variant=v.variant,
                target_path=v.target_path,
                length=v.length,
                hashes={"sha256": v.sha256},
                gates=gates,
                reason=f"rollout {rollout_id}" if rollout_id else "previous release",
            ).model_dump(mode="json")
        with self._cache_lock:
            if len(self._assign_cache) > 10_000:
                self._assign_cache.clear()
            self._assign_cache[key] = out
        return out

    # --- telemetry -----------------------------------------------------------------------------

    def telemetry(
        self, device_id: str, cred: DeviceCredential | str, batch: TelemetryBatch
    ) -> dict[str, Any]:
        if batch.device_id != device_id:
            raise ValidationError(
                f"telemetry batch is for device {batch.device_id!r} but was sent to {device_id!r}",
                hint="post each device's telemetry to its own /v1/devices/{device_id}/telemetry",
            )
        self.authenticate(device_id, cred)
        now = self.clock()
        for name in ("windows", "events"):
            try:
                json.dumps(getattr(batch, name), allow_nan=False)
            except ValueError:
                raise ValidationError(
                    f"telemetry {name} hold a non-finite number (NaN or Infinity)",
                    hint="send finite numbers only; JSON has no NaN or Infinity",
                ) from None
        windows = [self._window(w, i, now) for i, w in enumerate(batch.windows)]
        fail = failure_of(None, batch.events)
        with self.db.write() as s:
            existing = s.get(TelemetryBatchRow, (device_id, batch.batch_id))
            if existing is not None:
                return {"accepted": existing.windows, "duplicate": True}
            raw = batch.model_dump_json().encode()
            sha = self.blobs.put(raw)
            s.add(
                TelemetryBatchRow(
                    device_id=device_id,
                    batch_id=batch.batch_id,
                    received_at=now,
                    windows=len(windows),
                    blob_sha256=sha,
                )
            )
            for data, start, end in windows:
                s.add(
                    TelemetryWindowRow(
                        device_id=device_id,
                        batch_id=batch.batch_id,
                        received_at=now,
                        start=start,
                        end=end,
                        data=data,
                    )
                )
            if fail is not None and fail[0] not in ("*", "@active"):
                s.execute(
                    update(D)
                    .where(D.c.id == device_id)
                    .values(fail_version=fail[0], fail_at=now, fail_reason=fail[1])
                )
            try:
                s.flush()
            except SAIntegrityError:  # the same batch_id raced in from a retry
                s.rollback()
                return {"accepted": len(windows), "duplicate": True}
            self._trim(s, device_id)
        return {"accepted": len(windows), "duplicate": False}

    def _window(
        self, w: dict[str, Any], i: int, now: float
    ) -> tuple[dict[str, Any], float | None, float | None]:
        if self._window_cls is not None:
            try:
                self._window_cls.from_dict(w, now=now)
            except EdgefleetError as e:
                raise type(e)(f"windows[{i}]: {e.message}", hint=e.hint or "fix the window and resend") from e
        start, end = w.get("start"), w.get("end")
        start = float(start) if isinstance(start, (int, float)) and not isinstance(start, bool) else None
        end = float(end) if isinstance(end, (int, float)) and not isinstance(end, bool) else None
        return w, start, end

    def _trim(self, s, device_id: str) -> None:  # noqa: ANN001
        keep = self.config.max_windows_per_device
        cutoff = s.scalar(
            select(TelemetryWindowRow.id)
            .where(TelemetryWindowRow.device_id == device_id)
            .order_by(TelemetryWindowRow.id.desc())
            .offset(keep)
            .limit(1)
        )
        if cutoff is not None:
            s.execute(
                delete(TelemetryWindowRow).where(
                    TelemetryWindowRow.device_id == device_id, TelemetryWindowRow.id <= cutoff
                )
            )

    def windows(
        self, device_id: str, *, limit: int = 100, since: float | None = None
    ) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = (
                select(TelemetryWindowRow)
                .where(TelemetryWindowRow.device_id == device_id)
                .order_by(TelemetryWindowRow.id.desc())
                .limit(limit)
            )
            if since is not None:
                q = q.where(TelemetryWindowRow.received_at >= since)
            return [
                {
                    "batch_id": w.batch_id,
                    "received_at": w.received_at,
                    "start": w.start,
                    "end": w.end,
                    "window": w.data,
                }
                for w in s.scalars(q)
            ]


def _telemetry_window_class() -> Any:
    """``edgefleet.telemetry.Window`` when the telemetry library provides it (validation of windows)."""
    try:
        mod = importlib.import_module("edgefleet.telemetry")
    except ImportError:  # pragma: no cover
        return None
    cls = getattr(mod, "Window", None)
    return cls if cls is not None and hasattr(cls, "from_dict") else None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
