"""The heartbeat, the fleet's hot path: its HTTP endpoint, its validation and its one SQL statement.

A heartbeat is one ``UPDATE ... RETURNING``: it authenticates the device (token hash in the WHERE
clause, or only its id when it showed a verified client certificate naming it; never a revoked one),
takes the device's next director sequence number, records its report and health counters (``DeviceHealth``) and returns what the director decided
for it. It bypasses FastAPI's dependency machinery and SQLAlchemy's execution layer (``Database.hot``),
because at fleet scale those cost several times the statement itself; the FastAPI route of the same URL
in ``_app`` documents the endpoint in OpenAPI, and both answer alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError as PydanticValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from edgefleet.errors import AuthError, ValidationError
from edgefleet.protocol import EnrollRequest, Heartbeat
from edgefleet.server._auth import DEVICE_PREFIX, hash_token
from edgefleet.server._db import Database
from edgefleet.server._device_health import DeviceHealth
from edgefleet.server._http import DEVICE_ID_RE, validation_error
from edgefleet.tls import peer_cert_der

__all__ = ["HeartbeatWriter", "PreparedBeat", "failure_of", "heartbeat_endpoint", "json_response"]

# Agent events that mean "this build failed on the device" (see edgefleet.agent's journal events).
_FAIL_EVENTS = {
    "refused",
    "install_failed",
    "download_failed",
    "verification_failed",
    "health_check_failed",
    "activation_failed",
    "rollback_impossible",
}
_FAIL_STATES = {"failed", "error", "install_failed"}
MAX_REQUESTS_PER_BEAT = 10**9  # far above any device; keeps the counters' sums exact


def failure_of(state: str | None, events: list[dict[str, Any]]) -> tuple[str, str] | None:
    """What a report says failed: ``(key, reason)``.

    ``key`` is a version, ``sha:<prefix>`` of the build, ``@active`` (the build the device ran before
    this report: it rolled itself back from it), or ``*`` (a failure state with nothing more said).
    """
    for e in reversed(events):
        kind = str(e.get("event") or e.get("type") or e.get("kind") or "").lower()
        auto_rollback = kind == "rolled_back" and bool(e.get("auto"))
        if kind not in _FAIL_EVENTS and not kind.endswith("_failed") and not auto_rollback:
            continue
        reason = str(e.get("reason") or e.get("message") or e.get("error") or kind)[:1000]
        if auto_rollback or kind == "rollback_impossible":
            return "@active", reason
        if isinstance(e.get("version"), str):
            return e["version"][:64], reason
        sha = e.get("sha256")
        if isinstance(sha, str) and 8 <= len(sha) <= 64:
            return "sha:" + sha.lower()[:60], reason
        return "*", reason
    if state and state.lower() in _FAIL_STATES:
        return "*", state
    return None


# --- the statement -------------------------------------------------------------------------------

_PARAM_TYPES = {
    **DeviceHealth.PARAM_TYPES,
    "now": "double precision",
    "progress": "double precision",
    "hw_set": "boolean",
    "resources": "jsonb",
    "health": "jsonb",
    "hardware": "jsonb",
    "last_error": "text",
    "freason": "text",
}


def heartbeat_sql(dialect: str, *, by_token: bool = True) -> str:
    """The heartbeat's single statement, built once per process (parameters only change per call).

    In the drivers' own parameter styles (psycopg ``%(name)s``, sqlite3 ``:name``); PostgreSQL needs
    every parameter typed, because several are used in more than one place.
    """
    pg = dialect == "postgresql"

    def p(name: str) -> str:
        return f"CAST(%({name})s AS {_PARAM_TYPES.get(name, 'varchar')})" if pg else f":{name}"

    st = f"COALESCE(state, '') <> {p('state')}"
    who = f"id = {p('id')} AND token_hash = {p('th')}" if by_token else f"id = {p('id')}"
    return f"""
        UPDATE devices SET
          last_seen = {p("now")}, state = {p("state")}, progress = {p("progress")},
          last_error = {p("last_error")}, resources = {p("resources")}, health = {p("health")},
          active_name = {p("an")}, active_version = {p("av")}, active_variant = {p("avar")},
          active_target = {p("at")}, active_sha256 = {p("key")},
          {DeviceHealth.set_sql(p)},
          fail_version = CASE {p("fkind")}
            WHEN 'none' THEN fail_version
            WHEN 'state' THEN (CASE WHEN {st} THEN '*' ELSE fail_version END)
            WHEN 'active' THEN active_version
            ELSE {p("fval")} END,
          fail_at = CASE {p("fkind")}
            WHEN 'none' THEN fail_at
            WHEN 'state' THEN (CASE WHEN {st} THEN {p("now")} ELSE fail_at END)
            ELSE {p("now")} END,
          fail_reason = CASE {p("fkind")}
            WHEN 'none' THEN fail_reason
            WHEN 'state' THEN (CASE WHEN {st} THEN {p("freason")} ELSE fail_reason END)
            ELSE {p("freason")} END,
          hardware = CASE WHEN {p("hw_set")} THEN {p("hardware")} ELSE hardware END,
          device_class = COALESCE({p("dclass")}, device_class),
          arch = COALESCE({p("arch")}, arch),
          director_seq = director_seq + 1
        WHERE {who} AND revoked = FALSE
        RETURNING assigned_variant_id, assigned_rollout_id, command, command_version, director_seq,
          name, device_class, arch, tags
        """


def clear_command_sql(dialect: str) -> str:
    if dialect == "postgresql":
        return "UPDATE devices SET command = NULL, command_version = NULL WHERE id = %(id)s AND command = %(cmd)s"
    return "UPDATE devices SET command = NULL, command_version = NULL WHERE id = :id AND command = :cmd"


@dataclass(frozen=True)
class PreparedBeat:
    """A checked heartbeat, ready to write: the statement's parameters and what decides its command."""

    device_id: str
    by_token: bool
    params: dict[str, Any]
    active_version: str | None
    rollback_impossible: bool


class HeartbeatWriter:
    """Checks a heartbeat and records it with one statement; returns the device's row of the director."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.sql = {True: heartbeat_sql(db.dialect), False: heartbeat_sql(db.dialect, by_token=False)}
        self._clear_sql = clear_command_sql(db.dialect)

    def prepare(self, device_id: str, token: str | None, hb: Heartbeat, now: float) -> PreparedBeat:
        """Check ``hb`` and build its statement's parameters (no database access).

        ``token`` None: the caller authenticated the device by its client certificate.
        """
        if hb.device_id != device_id:
            raise ValidationError(
                f"heartbeat is for device {hb.device_id!r} but was sent to {device_id!r}",
                hint="post each device's heartbeat to its own /v1/devices/{device_id}/heartbeat",
            )
        if token is not None and not token.startswith(DEVICE_PREFIX):
            raise AuthError("a device token (efd_...) is required here", hint="send the device's own token")
        _finite(hb.health.model_dump(), "health")
        if not 0 <= hb.health.errors <= hb.health.requests <= MAX_REQUESTS_PER_BEAT:
            raise ValidationError(
                f"heartbeat health has requests={hb.health.requests}, errors={hb.health.errors}; "
                f"need 0 <= errors <= requests <= {MAX_REQUESTS_PER_BEAT}",
                hint="report the requests and errors since the previous heartbeat",
            )
        _finite(hb.resources.model_dump(), "resources")
        a = hb.active
        fail = failure_of(hb.state, hb.events)
        fkind, fval, freason = "none", None, None
        if fail is not None:
            fval, freason = fail
            fkind = {"*": "state", "@active": "active"}.get(fval, "value")
        hw = hb.hardware
        params = {
            **DeviceHealth.beat_params(hb),
            "id": device_id,
            "th": hash_token(token) if token is not None else None,
            "now": now,
            "state": hb.state[:64],
            "progress": hb.progress,
            "last_error": hb.last_error,
            # pydantic writes the JSON itself: no dict built and serialised again
            "resources": hb.resources.model_dump_json(exclude_none=True),
            "health": hb.health.model_dump_json(exclude_none=True),
            "an": a.name[:64] if a else None,
            "av": a.version[:64] if a else None,
            "avar": a.variant[:64] if a else None,
            "at": a.target_path[:512] if a else None,
            "fkind": fkind,
            "fval": fval,
            "freason": freason,
            "hw_set": hw is not None,
            "hardware": hw.model_dump_json(exclude={"tags"}) if hw else None,
            "dclass": hw.device_class[:64] if hw else None,
            "arch": hw.arch[:64] if hw else None,
        }
        # A device with no earlier version cannot carry out a rollback: asking again on every beat
        # would loop forever, so its report of that ends the command.
        impossible = any(str(e.get("event") or "").lower() == "rollback_impossible" for e in hb.events)
        return PreparedBeat(device_id, token is not None, params, a.version if a else None, impossible)

    def finish(self, cur: Any, beat: PreparedBeat, row: Any) -> bool:
        """After the statement: clear the device's command when its report satisfies it; True if it did."""
        if row is None or row[2] is None:
            return False
        done = _command_done(row[3], beat.active_version) or beat.rollback_impossible
        if done:
            cur.execute(self._clear_sql, {"id": beat.device_id, "cmd": row[2]})
        return done

    def record(self, device_id: str, token: str | None, hb: Heartbeat, now: float) -> tuple[Any, bool]:
        """``(row, command_done)``; ``row`` is ``(variant_id, rollout_id, command, command_version, seq,
        name, device_class, arch, tags)`` (the last four match update policies' selectors), or None when
        the device/token pair did not authenticate (nothing was written then)."""
        beat = self.prepare(device_id, token, hb, now)

        def run(cur: Any) -> tuple[Any, bool]:
            cur.execute(self.sql[beat.by_token], beat.params)
            rows = cur.fetchall()  # exhausted, so SQLite finishes (commits) the statement now
            row = rows[0] if rows else None
            return row, self.finish(cur, beat, row)

        return self.db.hot(run)


def _finite(values: dict[str, Any], where: str) -> None:
    """Gates cannot compare NaN or infinity, and JSON columns cannot store them: refuse them."""
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ValidationError(
                f"heartbeat {where}.{k} is {v}, not a finite number",
                hint="report finite figures, or leave the field out when there is none",
            )


def _command_done(command_version: str | None, active_version: str | None) -> bool:
    """Is a pending command satisfied by what the device now runs? (``=X``: runs X; ``!X``: not X)."""
    if not command_version:
        return False
    op, v = command_version[0], command_version[1:]
    if op == "=":
        return active_version == v
    if op == "!":
        return active_version != v
    return False


# --- the endpoint --------------------------------------------------------------------------------


def heartbeat_endpoint(ctx: Any, on_beat: Callable[[], None]) -> Callable[[Request], Any]:
    """``POST /v1/devices/{device_id}/heartbeat`` as a plain Starlette endpoint over ``ctx.devices``.

    It makes the same checks in the same order as the documented FastAPI route (credentials before the
    body) and answers with the same bodies. On SQLite the statement runs on the event loop (local CPU
    work under one write lock; a hop to the thread pool would cost more than the query); on PostgreSQL
    it joins the next coalesced batch of the writer thread (``_heartbeat_batch``), so the waits for the
    database overlap and many heartbeats share one round trip.
    """
    inline = ctx.db.dialect == "sqlite"

    async def endpoint(request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not DEVICE_ID_RE.match(device_id):
            raise validation_error(
                [{"loc": ["device_id"], "msg": "String should match pattern '^[A-Za-z0-9_.\\-]+$'"}], "path"
            )
        scheme, _, raw = (request.headers.get("authorization") or "").partition(" ")
        token = raw.strip() if scheme.lower() == "bearer" else None
        cred = ctx.devices.credential(device_id, token, peer_cert_der(request.scope))
        body = await request.body()
        try:
            hb = Heartbeat.model_validate_json(body)
        except PydanticValidationError as e:
            raise validation_error(e.errors(include_url=False), "body") from None
        if inline:
            out = ctx.devices.heartbeat(device_id, cred, hb)
        else:
            out = await ctx.devices.aheartbeat(device_id, cred, hb)
        on_beat()
        return json_response(out)

    return endpoint


def enroll_endpoint(ctx: Any, on_enroll: Callable[[], None]) -> Callable[[Request], Any]:
    """``POST /v1/enroll`` as a plain Starlette endpoint: the body parsed straight into ``EnrollRequest``,
    the service's transaction in the thread pool, the answer serialized once. Same checks and bodies as
    the documented route; FastAPI's per-request machinery cost more CPU than the enrollment itself."""

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        try:
            req = EnrollRequest.model_validate_json(body)
        except PydanticValidationError as e:
            raise validation_error(e.errors(include_url=False), "body") from None
        base = str(request.base_url) + "repository/"
        out = await run_in_threadpool(ctx.devices.enroll, req, repository_url=base)
        on_enroll()
        return Response(out.model_dump_json(), media_type="application/json")

    return endpoint


def json_response(out: dict[str, Any]) -> Response:
    """The heartbeat's answer, compact (both heartbeat routes answer with these bytes)."""
    return Response(orjson.dumps(out), media_type="application/json")
