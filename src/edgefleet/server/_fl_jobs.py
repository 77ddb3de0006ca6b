"""Federated jobs on the control plane (issue 14 item 1); ``install_fl_jobs(app, ctx)`` wires it.

An operator (``edgefleet fl start --server URL --selector ...``) registers the job it runs: its Flower
SuperLink address, the devices it wants (a selector) and how long it runs. The director then names the job in
the heartbeat answer of every selected device (``federated``: job id, SuperLink, until); the agent starts a
SuperNode while its device state allows. ``fl start`` posts the rounds as they close and marks the job
finished (or failed) at its end; an operator can stop it. Routes (viewer reads, deployer writes, audited):

* ``POST /v1/fl/jobs`` (an ``FlJobIn``), ``GET /v1/fl/jobs``, ``GET /v1/fl/jobs/{id}``;
* ``POST /v1/fl/jobs/{id}/progress`` (the rounds so far), ``POST /v1/fl/jobs/{id}/stop`` (an ``FlJobEnd``);
* SuperNode keys (Flower's SuperNode authentication, when the job's SuperLink runs TLS): a selected device
  posts its per-job node public key (``POST /v1/devices/{device}/fl/{id}/node-key``, the device's own
  credential); ``fl start`` reads the keys (``GET /v1/fl/jobs/{id}/node-keys``), registers them with its
  SuperLink and says so (``POST /v1/fl/jobs/{id}/node-keys/registered``); the device starts its SuperNode
  once its key is registered.

The heartbeat path reads only an in-memory list of the running jobs, reloaded on every write here and at most
``ttl_s`` after a write by another server process; with no running job it costs one attribute check.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Boolean, Float, String, select
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.errors import ConflictError, InputError, NotFoundError
from edgefleet.server._audit import audit
from edgefleet.server._auth import Operator, Role
from edgefleet.server._db import Database
from edgefleet.server._http import DEVICE_ID_RE, ERRORS, AuthenticatedDevice, operator
from edgefleet.server._models import Base, Device, JSONType
from edgefleet.server._selector import Selector, device_attrs

__all__ = ["FlJobEnd", "FlJobIn", "FlJobRow", "FlJobs", "install_fl_jobs"]

JOB_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MAX_DURATION_S = 7 * 24 * 3600.0
STATES = ("running", "finished", "failed", "stopped")


class FlJobRow(Base):
    """One federated job an operator runs: where its SuperLink is, which devices it wants, until when."""

    __tablename__ = "fl_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    superlink: Mapped[str] = mapped_column(String(256))
    selector: Mapped[str] = mapped_column(String(1024))
    until: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    rounds: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class FlNodeKeyRow(Base):
    """A selected device's per-job SuperNode public key (OpenSSH line), and whether ``fl start`` registered it
    with the job's SuperLink."""

    __tablename__ = "fl_node_keys"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(1024))
    registered: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class FlNodeKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key: str = Field(
        min_length=20, max_length=1024, description="OpenSSH public key line, ECDSA on a NIST curve"
    )


class FlNodeKeysRegistered(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[dict[str, str]] = Field(
        max_length=10_000, description="[{device_id, public_key}] the SuperLink now accepts"
    )


class FlJobIn(BaseModel):
    """A job an operator registers (``fl start --server`` does it for the job it runs)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    superlink: str = Field(
        min_length=3,
        max_length=256,
        pattern=r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$",
        description="host:port the devices' SuperNodes connect to",
    )
    selector: str = Field("*", max_length=1024, description="devices that take part, e.g. 'region=eu'")
    duration_s: float = Field(gt=0, le=MAX_DURATION_S, description="devices leave the job after this long")
    spec: dict[str, Any] = Field(
        default_factory=dict, description="the job's settings (rounds, clients per round, ...), for display"
    )


class FlJobProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rounds: list[dict[str, Any]] = Field(max_length=1000, description="the round reports so far")


class FlJobEnd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["finished", "failed", "stopped"] = "stopped"
    reason: str | None = Field(None, max_length=1024)
    rounds: list[dict[str, Any]] | None = Field(None, max_length=1000)


@dataclass(frozen=True)
class _Active:
    job_id: str
    superlink: str
    until: float
    selector: Selector

    def answer(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "superlink": self.superlink, "until": self.until}


def _as_dict(row: FlJobRow) -> dict[str, Any]:
    rounds = list(row.rounds or [])
    accuracy = [r.get("accuracy") for r in rounds]
    epsilon = [r["epsilon"] for r in rounds if r.get("epsilon") is not None]
    return {
        "job_id": row.id,
        "superlink": row.superlink,
        "selector": row.selector,
        "until": row.until,
        "state": row.state,
        "spec": row.spec,
        "rounds": rounds,
        "rounds_done": len(rounds),
        "accuracy": accuracy[-1] if accuracy else None,
        "epsilon": epsilon[-1] if epsilon else None,
        "created_at": row.created_at,
        "created_by": row.created_by,
        "ended_at": row.ended_at,
        "reason": row.reason,
    }


def _round_summary(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the round figures (numbers and flags) are kept; nothing that could name a device."""
    keep = ("round", "selected", "answered", "late", "dropped", "bytes_down", "bytes_up", "seconds")
    out = []
    for r in rounds:
        if not isinstance(r, dict):
            raise InputError("each round report must be an object")
        item: dict[str, Any] = {}
        for k in (*keep, "accuracy", "epsilon", "aggregated"):
            v = r.get(k)
            if v is None or isinstance(v, bool | int | float):
                item[k] = v
        out.append(item)
    return out


class FlJobs:
    """The jobs table and the running jobs' in-memory list the director reads on each heartbeat."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time, ttl_s: float = 2.0) -> None:
        self.db = db
        self.clock = clock
        self.ttl_s = ttl_s
        self._active: list[_Active] = []
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    # --- operators ---------------------------------------------------------------------------------

    def create(self, body: FlJobIn, *, actor: str) -> dict[str, Any]:
        selector = Selector.parse(body.selector).text
        now = self.clock()
        with self.db.write() as s:
            old = s.get(FlJobRow, body.job_id)
            if old is not None and old.state == "running" and old.until > now:
                raise ConflictError(
                    f"federated job {body.job_id!r} is running",
                    hint=f"stop it first (POST /v1/fl/jobs/{body.job_id}/stop) or use another job id",
                )
            if old is not None:
                s.delete(old)
                s.flush()
            from sqlalchemy import delete

            s.execute(delete(FlNodeKeyRow).where(FlNodeKeyRow.job_id == body.job_id))  # keys of a past run
            row = FlJobRow(
                id=body.job_id,
                superlink=body.superlink,
                selector=selector,
                until=now + body.duration_s,
                state="running",
                spec=json.loads(json.dumps(body.spec, default=str)),
                rounds=[],
                created_at=now,
                created_by=actor,
            )
            s.add(row)
            audit(
                s, "fl_job.start", actor=actor, now=now, job_id=body.job_id, selector=selector,
                superlink=body.superlink,
            )  # fmt: skip
            out = _as_dict(row)
        self.invalidate()
        return out

    def list(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.scalars(select(FlJobRow).order_by(FlJobRow.created_at.desc()).limit(200)).all()
            return [self._shown(_as_dict(r)) for r in rows]

    def get(self, job_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            row = s.get(FlJobRow, job_id)
            if row is None:
                raise NotFoundError(f"no federated job {job_id!r}", hint="list them: GET /v1/fl/jobs")
            return self._shown(_as_dict(row))

    def progress(self, job_id: str, body: FlJobProgress, *, actor: str) -> dict[str, Any]:
        with self.db.write() as s:
            row = self._running(s, job_id)
            row.rounds = _round_summary(body.rounds)
            return _as_dict(row)

    def stop(self, job_id: str, body: FlJobEnd, *, actor: str) -> dict[str, Any]:
        now = self.clock()
        with self.db.write() as s:
            row = s.get(FlJobRow, job_id)
            if row is None:
                raise NotFoundError(f"no federated job {job_id!r}", hint="list them: GET /v1/fl/jobs")
            if body.rounds is not None:
                row.rounds = _round_summary(body.rounds)
            if row.state == "running":
                row.state, row.ended_at, row.reason = body.state, now, body.reason
                audit(s, f"fl_job.{body.state}", actor=actor, now=now, job_id=job_id, reason=body.reason)
            out = _as_dict(row)
        self.invalidate()
        return out

    # --- SuperNode keys ------------------------------------------------------------------------------

    def post_node_key(self, job_id: str, device_id: str, body: FlNodeKeyIn) -> dict[str, Any]:
        """A device's node key for a running job that selects it; a new key replaces the old (unregistered)."""
        from edgefleet.federated._security import check_node_public_key

        public_key = check_node_public_key(body.public_key, "public_key")
        now = self.clock()
        with self.db.write() as s:
            row = self._running(s, job_id)
            if row.until <= now:
                raise ConflictError(f"federated job {job_id!r} is over", hint="wait for the next job")
            dev = s.get(Device, device_id)
            if dev is None or not Selector.parse(row.selector).matches(
                device_attrs(
                    device_id=device_id, name=dev.name, device_class=dev.device_class, arch=dev.arch,
                    tags=dev.tags or {}, active_version=dev.active_version, active_name=dev.active_name,
                )
            ):  # fmt: skip
                raise ConflictError(
                    f"federated job {job_id!r} does not select this device",
                    hint="join the job you are named in",
                )
            key = s.get(FlNodeKeyRow, (job_id, device_id))
            if key is None:
                key = FlNodeKeyRow(
                    job_id=job_id,
                    device_id=device_id,
                    public_key=public_key,
                    registered=False,
                    created_at=now,
                )
                s.add(key)
            elif key.public_key != public_key:
                key.public_key, key.registered, key.created_at = public_key, False, now
            return {"job_id": job_id, "registered": bool(key.registered)}

    def node_keys(self, job_id: str) -> list[dict[str, Any]]:
        with self.db.read() as s:
            if s.get(FlJobRow, job_id) is None:
                raise NotFoundError(f"no federated job {job_id!r}", hint="list them: GET /v1/fl/jobs")
            rows = s.scalars(
                select(FlNodeKeyRow).where(FlNodeKeyRow.job_id == job_id).order_by(FlNodeKeyRow.created_at)
            ).all()
            return [
                {"device_id": r.device_id, "public_key": r.public_key, "registered": bool(r.registered)}
                for r in rows
            ]

    def node_keys_registered(self, job_id: str, body: FlNodeKeysRegistered, *, actor: str) -> dict[str, Any]:
        """Mark keys registered (only where the device still holds that key)."""
        marked = 0
        with self.db.write() as s:
            self._running(s, job_id)
            for item in body.keys:
                key = s.get(FlNodeKeyRow, (job_id, str(item.get("device_id", ""))[:64]))
                if key is not None and key.public_key == item.get("public_key") and not key.registered:
                    key.registered = True
                    marked += 1
        return {"job_id": job_id, "registered": marked}

    def _running(self, s: Any, job_id: str) -> FlJobRow:
        row = s.get(FlJobRow, job_id)
        if row is None:
            raise NotFoundError(f"no federated job {job_id!r}", hint="list them: GET /v1/fl/jobs")
        if row.state != "running":
            raise ConflictError(f"federated job {job_id!r} is {row.state}", hint="start a new job")
        return row

    def _shown(self, job: dict[str, Any]) -> dict[str, Any]:
        if job["state"] == "running" and job["until"] <= self.clock():
            job["state"] = "expired"  # its time ran out without an end report (fl start killed?)
        return job

    # --- the director --------------------------------------------------------------------------------

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    def stale(self) -> bool:
        return time.monotonic() - self._loaded_at >= self.ttl_s

    def reload(self) -> None:
        now = self.clock()
        with self.db.read() as s:
            rows = s.execute(
                select(FlJobRow.id, FlJobRow.superlink, FlJobRow.until, FlJobRow.selector).where(
                    FlJobRow.state == "running", FlJobRow.until > now
                )
            ).all()
        active = [_Active(r[0], r[1], float(r[2]), Selector.parse(r[3])) for r in rows]
        with self._lock:
            self._active, self._loaded_at = active, time.monotonic()

    def for_device(self, device_id: str, row: Any, hb: Any, now: float) -> dict[str, Any] | None:
        """The job the device should take part in now (``HeartbeatResponse.federated``), from the cached list;
        ``row`` is the heartbeat writer's device row (name, class, arch, tags at 5..8)."""
        if self.stale():
            self.reload()
        active = self._active
        if not active:
            return None
        tags = row[8]
        attrs = device_attrs(
            device_id=device_id,
            name=row[5],
            device_class=row[6],
            arch=row[7],
            tags=json.loads(tags) if isinstance(tags, str) else tags,
            active_version=hb.active.version if hb.active else None,
            active_name=hb.active.name if hb.active else None,
        )
        for job in active:
            if job.until > now and job.selector.matches(attrs):
                return job.answer()
        return None


Viewer = Annotated[Operator, Depends(operator(Role.viewer))]
Deployer = Annotated[Operator, Depends(operator(Role.deployer))]
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN)]
DeviceId = Annotated[str, Path(min_length=1, max_length=64, pattern=DEVICE_ID_RE.pattern)]
T = ["federated jobs"]


def install_fl_jobs(app: FastAPI, ctx: Any) -> FlJobs:
    """Add the federated-job routes; the director names a running job in its selected devices' answers."""
    jobs = FlJobs(ctx.db, clock=ctx.clock)
    app.state.fl_jobs = jobs
    ctx.devices.fl_jobs = jobs

    @app.post("/v1/fl/jobs", tags=T, responses=ERRORS, status_code=201, summary="Register a federated job")
    def create_job(body: FlJobIn, me: Deployer) -> dict[str, Any]:
        return jobs.create(body, actor=me.actor)

    @app.get("/v1/fl/jobs", tags=T, responses=ERRORS, summary="Federated jobs, newest first")
    def list_jobs(_: Viewer) -> list[dict[str, Any]]:
        return jobs.list()

    @app.get("/v1/fl/jobs/{job_id}", tags=T, responses=ERRORS, summary="One federated job and its rounds")
    def get_job(job_id: JobId, _: Viewer) -> dict[str, Any]:
        return jobs.get(job_id)

    @app.post("/v1/fl/jobs/{job_id}/progress", tags=T, responses=ERRORS, summary="A job's rounds so far")
    def job_progress(job_id: JobId, body: FlJobProgress, me: Deployer) -> dict[str, Any]:
        return jobs.progress(job_id, body, actor=me.actor)

    @app.post("/v1/fl/jobs/{job_id}/stop", tags=T, responses=ERRORS, summary="End a federated job")
    def stop_job(job_id: JobId, me: Deployer, body: FlJobEnd | None = None) -> dict[str, Any]:
        return jobs.stop(job_id, body or FlJobEnd(), actor=me.actor)

    @app.get(
        "/v1/fl/jobs/{job_id}/node-keys", tags=T, responses=ERRORS, summary="SuperNode keys devices sent"
    )
    def node_keys(job_id: JobId, _: Deployer) -> list[dict[str, Any]]:
        return jobs.node_keys(job_id)

    @app.post(
        "/v1/fl/jobs/{job_id}/node-keys/registered", tags=T, responses=ERRORS,
        summary="SuperNode keys the job's SuperLink accepts now",
    )  # fmt: skip
    def node_keys_registered(job_id: JobId, body: FlNodeKeysRegistered, me: Deployer) -> dict[str, Any]:
        return jobs.node_keys_registered(job_id, body, actor=me.actor)

    @app.post(
        "/v1/devices/{device_id}/fl/{job_id}/node-key", tags=T, responses=ERRORS,
        summary="A selected device's per-job SuperNode public key",
    )  # fmt: skip
    def post_node_key(
        device_id: DeviceId, job_id: JobId, body: FlNodeKeyIn, cred: AuthenticatedDevice
    ) -> dict[str, Any]:
        return jobs.post_node_key(job_id, device_id, body)

    return jobs
