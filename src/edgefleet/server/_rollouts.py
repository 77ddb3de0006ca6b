"""Rollouts: waves with stable hash membership, gates against a control group, transitions, audit.

Every change of a rollout (creation, a tick of the engine, an operator action) runs in one database
transaction holding the ``rollouts`` lock, and re-reads the rollout's state under that lock. With
several server processes on one PostgreSQL, a wave therefore opens, passes or fails exactly once.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.errors import ConflictError, NotFoundError, RolloutError
from edgefleet.protocol import GateThresholds
from edgefleet.server._accuracy import accuracy_gate, gate_counts
from edgefleet.server._aggregate import Aggregate
from edgefleet.server._audit import audit
from edgefleet.server._db import Database
from edgefleet.server._fit import FitResult
from edgefleet.server._gates import (
    GateResult,
    failure_reason,
    gate_waits,
    health_gates,
    install_failure_gate,
    persist,
    pick_reference,
    wave_verdict,
)
from edgefleet.server._models import Device, Release, Rollout
from edgefleet.server._notify import Notifier, NullNotifier
from edgefleet.server._rollout_reads import FINAL_STATES, describe_rollout, wave_history
from edgefleet.server._schemas import RolloutCreate, RolloutGates
from edgefleet.server._selector import Selector
from edgefleet.server._update_policies import UpdatePolicies
from edgefleet.server._waves import (
    ENGINE,
    EnginePass,
    admit,
    admit_late,
    install_failed,
    rollout_rows,
    selector_attrs,
    write_assignments,
)

__all__ = [
    "RolloutEngine",
    "ACTIVE_STATES",
]

log = logging.getLogger(__name__)

LOCK = "rollouts"
ACTIVE_STATES = ("running", "waiting_approval", "paused", "halted")


class RolloutEngine:
    """Creates rollouts, advances them on ``tick()``, and applies operator actions.

    Args:
        db: the database.
        notifier: where nudges go after each committed change.
        clock: time source (UNIX seconds); tests pass their own.
    """

    def __init__(
        self,
        db: Database,
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.notifier = notifier or NullNotifier()
        self.clock = clock
        self._late_mark: tuple[float | None, Any] | None = None
        #: update policies per device group (``_update_policies``); set by ``create_app``
        self.update_policies: UpdatePolicies | None = None

    # --- creation ------------------------------------------------------------------------------

    def create(self, spec: RolloutCreate, *, actor: str) -> dict[str, Any]:
        """Validate and start a rollout; wave 1 is admitted at once.

        Raises:
            NotFoundError: the release is not registered.
            ConflictError: an active rollout has an overlapping selector (it is named).
            RolloutError: the selector matches no device, or no selected device fits the release.
        """
        sel = Selector.parse(spec.selector)
        soak = spec.soak_list()
        now = self.clock()
        with self.db.write() as s:
            self.db.lock(s, LOCK)
            release = s.scalars(
                select(Release).where(Release.name == spec.name, Release.version == spec.version)
            ).one_or_none()
            if release is None:
                raise NotFoundError(
                    f"release {spec.name} {spec.version} is not registered",
                    hint=f"register it first: edgefleet release register {spec.name} {spec.version}",
                )
            for other in s.scalars(select(Rollout).where(Rollout.state.in_(ACTIVE_STATES))):
                if Selector.parse(other.selector).may_overlap(sel):
                    orel = s.get(Release, other.release_id)
                    raise ConflictError(
                        f"rollout {other.id} ({orel.name} {orel.version}, selector {other.selector!r}, "
                        f"{other.state}) is still active on a selector overlapping {sel.text!r}",
                        hint=f"let it finish, or abort it (edgefleet rollout abort {other.id}), "
                        "or choose a disjoint selector",
                        other=other.id,
                    )
            ctx = self._pass(s, now)
            rel = ctx.release(release.id)
            if not rel.variants:
                raise RolloutError(
                    f"release {spec.name} {spec.version} has no variants",
                    hint="publish at least one bundle for it and register it again",
                )
            selected = [d for d in ctx.devices if sel.matches(selector_attrs(d))]
            if not selected:
                raise RolloutError(
                    f"selector {sel.text!r} matches no enrolled device",
                    hint="check it with: edgefleet devices list --selector '...'",
                    selector=sel.text,
                )
            fits = {d.id: ctx.fit(rel.row.id, d) for d in selected}
            if not any(f.fits for f in fits.values()):
                reasons = _group_reasons(fits)
                raise RolloutError(
                    f"no selected device fits {spec.name} {spec.version}: {reasons}",
                    hint="publish a variant for these device classes, or change the selector",
                    does_not_fit=len(fits),
                )
            gates = spec.gates
            control = Aggregate.of(self._control(selected, set(), release))
            r = Rollout(
                id="ro-" + secrets.token_hex(5),
                release_id=release.id,
                selector=sel.text,
                waves=list(spec.waves),
                soak_s=soak,
                policy=spec.policy,
                on_fail=spec.on_fail,
                gates=gates.model_dump(),
                device_gates=(spec.device_gates or GateThresholds()).model_dump(),
                state="running",
                wave_index=0,
                wave_started_at=now,
                created_at=now,
                updated_at=now,
                created_by=actor,
                baseline=control.to_dict() if control.requests else None,
                force=spec.force,
            )
            s.add(r)
            s.flush()
            audit(
                s,
                "rollout.created",
                actor=actor,
                now=now,
                rollout_id=r.id,
                to_state="running",
                release=f"{spec.name} {spec.version}",
                selector=sel.text,
                waves=r.waves,
                soak_s=soak,
                policy=r.policy,
                on_fail=r.on_fail,
                selected=len(selected),
                does_not_fit=sum(1 for f in fits.values() if not f.fits),
                baseline=r.baseline,
                force=spec.force,
            )
            admit(ctx, r, opened=True)
            r.evaluation = self.evaluate(ctx, r)
            write_assignments(ctx)
            out = describe_rollout(s, r)
        self._send(ctx.nudges)
        return out

    # --- the engine ----------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """One pass over the live rollouts: admit devices, evaluate gates, advance, halt or roll back.

        Returns:
            The transitions made (also in the audit log); empty if another process holds the lock.
        """
        now = self.clock() if now is None else now
        with self.db.write() as s:
            if not self.db.try_lock(s, LOCK):
                return []
            ctx = self._pass(s, now)
            rollouts = list(
                s.scalars(
                    select(Rollout)
                    .where(Rollout.state.in_((*ACTIVE_STATES, "completed")))
                    .order_by(Rollout.created_at)
                )
            )
            transitions: list[dict[str, Any]] = []
            late = self._late_admission_due(s, rollouts, now)
            for r in rollouts:
                before = (r.state, r.wave_index)
                if r.state == "running":
                    admit(ctx, r)
                    ev = self.evaluate(ctx, r)
                    r.evaluation = ev
                    if ev["status"] == "fail":
                        self._gate_failed(ctx, r, ev)
                    elif ev["status"] == "pass":
                        self._wave_passed(ctx, r, ev)
                elif r.state == "completed":
                    if late:
                        admit_late(ctx, r)
                else:
                    r.evaluation = self.evaluate(ctx, r)
                if (r.state, r.wave_index) != before:
                    r.updated_at = now
                    transitions.append({"rollout": r.id, "from": before, "to": (r.state, r.wave_index)})
            write_assignments(ctx)
        self._send(ctx.nudges)
        return transitions

    def _late_admission_due(self, s: Session, rollouts: list[Rollout], now: float) -> bool:
        """Completed rollouts admit devices enrolled since, or whose group's pin or deferral ended; only
        look when someone enrolled or the update policies' epoch moved."""
        if not any(r.state == "completed" for r in rollouts):
            return False
        epoch = self.update_policies.epoch(now) if self.update_policies is not None else None
        mark = (s.scalar(select(func.max(Device.enrolled_at))), epoch)
        if mark == self._late_mark or mark == (None, None):
            return False
        self._late_mark = mark
        return True

    # --- gates ---------------------------------------------------------------------------------

    def _control(self, selected: list[Device], admitted: set[str], release: Release) -> list[Device]:
        """The control group: selected devices not in the rollout, reporting an earlier version."""
        return [
            d
            for d in selected
            if d.id not in admitted
            and d.active_name == release.name
            and d.active_version is not None
            and d.active_version != release.version
            and d.h_key is not None
            and d.h_key == d.active_sha256
        ]

    def evaluate(self, ctx: EnginePass, r: Rollout) -> dict[str, Any]:
        """The current wave's gates with the figures behind each verdict."""
        rel = ctx.release(r.release_id)
        version = rel.row.version
        g = RolloutGates(**r.gates)
        rows = rollout_rows(ctx.s, r)
        by_id = ctx.by_id()
        sel = Selector.parse(r.selector)
        admitted = {k: rd for k, rd in rows.items() if rd.status == "admitted"}
        wave = [(by_id[k], rd) for k, rd in admitted.items() if k in by_id]
        installed = [d for d, _ in wave if d.active_name == rel.row.name and d.active_version == version]
        failed = [
            d
            for d, rd in wave
            if install_failed(d, rd, version, getattr(rel.by_id.get(rd.variant_id), "sha256", None))
        ]
        held = self._held(ctx, r, wave, version, skip={d.id for d in (*installed, *failed)})
        reporting = [
            d
            for d in installed
            if d.h_key is not None
            and d.h_key == d.active_sha256
            and (d.h_requests > 0 or d.h_golden is not None)
        ]
        new = Aggregate.of(reporting)
        selected = [d for d in ctx.devices if sel.matches(selector_attrs(d))]
        control_devices = self._control(selected, set(admitted), rel.row)
        control = Aggregate.of(control_devices)
        ref, ref_source = pick_reference(control, Aggregate.from_dict(r.baseline), g.min_control_requests)
        # The ratio gates compare the wave with the control group over the same minutes: the heartbeats
        # both sent in the last look period (a busy machine slows both alike).
        since = ctx.now - g.latency_look_s
        same_minutes = (
            (Aggregate.recent(reporting, since), Aggregate.recent(control_devices, since))
            if ref_source == "control"
            else None
        )
        # devices whose update policy pins another version or defers sit the rollout out (not admitted)
        outside = [d for d in selected if d.id not in rows or rows[d.id].status == "parked"]
        sitting_out = 0
        for d in outside:
            hold = ctx.parked(d, version) if ctx.parked is not None and not r.force else None
            if hold is not None:
                held[hold.kind] = held.get(hold.kind, 0) + 1
                sitting_out += 1
        eligible = len(admitted) + len(outside) - sitting_out
        min_dev = min(g.min_devices, max(1, eligible))
        enough_devices = len(reporting) >= min_dev
        enough_requests = new.requests >= g.min_requests

        gates = [
            install_failure_gate(
                installed=len(installed),
                failed=len(failed),
                wave=len(wave),
                min_devices=min_dev,
                limit=g.max_install_failure_rate,
            ),
            *health_gates(new, ref, g, judged=enough_devices and enough_requests, same_minutes=same_minutes),
        ]
        if g.min_labelled:  # live accuracy from labelled samples (issue 13)
            new_counts, control_counts, historical = gate_counts(
                ctx.s,
                [d.id for d in installed],
                [d.id for d in control_devices],
                f"{rel.row.name}@{version}",
            )
            gates.append(
                accuracy_gate(
                    new_counts,
                    control_counts,
                    min_labelled=g.min_labelled,
                    margin=g.max_accuracy_drop,
                    min_accuracy=g.min_accuracy,
                    historical=historical,
                )
            )
        looks = self._latency_looks(ctx, r, g, gates)

        soak = r.soak_s[r.wave_index] if r.wave_index < len(r.soak_s) else r.soak_s[-1]
        elapsed = (
            ctx.now - r.wave_started_at
            if r.state != "paused"
            else (r.paused_at or ctx.now) - r.wave_started_at
        )
        waiting = []
        if elapsed < soak:
            waiting.append(f"soak {elapsed:.0f}/{soak:.0f}s")
        if not enough_devices:
            waiting.append(f"{len(reporting)}/{min_dev} devices reporting on {version}")
        if not enough_requests:
            waiting.append(f"{new.requests}/{g.min_requests} requests served on {version}")
        waiting += gate_waits(gates)
        status = wave_verdict(gates, waiting)
        return {
            "status": status,
            "at": ctx.now,
            "wave": r.wave_index + 1,
            "percent": r.waves[r.wave_index],
            "soak_s": soak,
            "soak_elapsed_s": round(elapsed, 3),
            "waiting_for": waiting,
            "failed_gates": [x.name for x in gates if x.status == "fail"],
            "gates": [asdict(x) for x in gates],
            "counts": {
                "eligible": eligible,
                "admitted": len(admitted),
                "installed": len(installed),
                "failed": len(failed),
                "reporting": len(reporting),
                "does_not_fit": sum(1 for rd in rows.values() if rd.status == "does_not_fit"),
                "min_devices": min_dev,
                "held": sum(held.values()),
            },
            "held": held,
            "wave_health": new.to_dict(),
            "reference": ref.to_dict() if ref is not None else None,
            "reference_source": ref_source,
            "control_devices": control.devices,
            "same_minutes": (
                {"since": since, "wave": same_minutes[0].brief(), "control": same_minutes[1].brief()}
                if same_minutes is not None
                else None
            ),
            "latency_looks": looks,
        }

    def _pass(self, s: Session, now: float) -> EnginePass:
        """One engine pass; devices whose update policy pins another version or defers sit it out."""
        ctx = EnginePass(s, now)
        policies = self.update_policies
        if policies is not None:
            seen: dict[tuple[str, str], Any] = {}  # admission and evaluation ask about the same devices

            def parked(d: Device, version: str) -> Any:
                key = (d.id, version)
                if key not in seen:
                    sig = (d.name, d.device_class, d.arch, repr(d.tags), d.active_name, d.active_version)
                    seen[key] = policies.parked(
                        lambda: selector_attrs(d), version=version, now=now, device=(("engine", d.id), sig)
                    )
                return seen[key]

            ctx.parked = parked
        return ctx

    def _held(
        self, ctx: EnginePass, r: Rollout, wave: list[tuple[Device, Any]], version: str, skip: set[str]
    ) -> dict[str, int]:
        """Admitted devices not yet on the release that their update policy holds, per reason kind.

        They wait (window closed, metered link, on battery, pinned, deferred); they are not failures.
        """
        if self.update_policies is None or r.force:
            return {}
        held: dict[str, int] = {}
        for d, _ in wave:
            if d.id in skip:
                continue
            hold = self.update_policies.hold(
                lambda d=d: selector_attrs(d), version=version, resources=d.resources, now=ctx.now
            )
            if hold is not None:
                held[hold.kind] = held.get(hold.kind, 0) + 1
        return held

    def _latency_looks(
        self, ctx: EnginePass, r: Rollout, g: RolloutGates, gates: list[GateResult]
    ) -> dict[str, Any]:
        """Replace the latency gate's one-look verdict by its verdict over consecutive looks (``persist``).

        A new look is taken at most once per ``latency_look_s`` (so each sees heartbeats the previous one
        did not); the count of looks over the limit is kept in the rollout's evaluation, per wave.
        """
        prev = r.evaluation or {}
        kept = (prev.get("latency_looks") or {}) if prev.get("wave") == r.wave_index + 1 else {}
        at, over = kept.get("at"), int(kept.get("over", 0))
        i = next(i for i, x in enumerate(gates) if x.name == "latency_p95_ratio")
        look = gates[i].status in ("pass", "fail") and (
            g.latency_looks <= 1 or at is None or ctx.now - at >= g.latency_look_s
        )
        gates[i], over = persist(gates[i], over=over, look=look, looks=g.latency_looks)
        return {"at": ctx.now if look else at, "over": over, "of": g.latency_looks}

    # --- transitions ---------------------------------------------------------------------------

    def _set_state(
        self, ctx: EnginePass, r: Rollout, state: str, action: str, actor: str, **details: Any
    ) -> None:
        before = r.state
        r.state = state
        r.updated_at = ctx.now
        if state in FINAL_STATES:
            r.finished_at = ctx.now
        audit(
            ctx.s,
            action,
            actor=actor,
            now=ctx.now,
            rollout_id=r.id,
            from_state=before,
            to_state=state,
            **details,
        )
        log.info("rollout %s: %s -> %s (%s)", r.id, before, state, action)

    def _gate_failed(self, ctx: EnginePass, r: Rollout, ev: dict[str, Any]) -> None:
        reason = failure_reason(ev["gates"])
        r.reason = reason
        audit(
            ctx.s,
            "rollout.gate_failed",
            actor=ENGINE,
            now=ctx.now,
            rollout_id=r.id,
            from_state=r.state,
            wave=r.wave_index + 1,
            reason=reason,
            evaluation=_slim(ev),
        )
        if r.on_fail == "rollback":
            self._rollback(ctx, r, actor=ENGINE, reason=reason)
        else:
            self._set_state(ctx, r, "halted", "rollout.halted", ENGINE, reason=reason)

    def _wave_passed(self, ctx: EnginePass, r: Rollout, ev: dict[str, Any]) -> None:
        audit(
            ctx.s,
            "rollout.wave_passed",
            actor=ENGINE,
            now=ctx.now,
            rollout_id=r.id,
            wave=r.wave_index + 1,
            percent=r.waves[r.wave_index],
            evaluation=_slim(ev),
        )
        if r.wave_index + 1 >= len(r.waves):
            r.reason = None
            self._set_state(ctx, r, "completed", "rollout.completed", ENGINE, waves=len(r.waves))
        elif r.policy == "auto":
            self._advance(ctx, r, actor=ENGINE)
        else:
            self._set_state(
                ctx, r, "waiting_approval", "rollout.waiting_approval", ENGINE, next_wave=r.wave_index + 2
            )

    def _advance(self, ctx: EnginePass, r: Rollout, *, actor: str) -> None:
        rel = ctx.release(r.release_id)
        sel = Selector.parse(r.selector)
        rows = rollout_rows(ctx.s, r)
        control = Aggregate.of(
            self._control([d for d in ctx.devices if sel.matches(selector_attrs(d))], set(rows), rel.row)
        )
        if control.requests >= RolloutGates(**r.gates).min_control_requests and control.requests:
            r.baseline = control.to_dict()
        before = r.state
        r.wave_index += 1
        r.wave_started_at = ctx.now
        r.state = "running"
        r.updated_at = ctx.now
        audit(
            ctx.s,
            "rollout.advanced",
            actor=actor,
            now=ctx.now,
            rollout_id=r.id,
            from_state=before,
            to_state="running",
            wave=r.wave_index + 1,
            percent=r.waves[r.wave_index],
        )
        admit(ctx, r, opened=True)

    def _rollback(self, ctx: EnginePass, r: Rollout, *, actor: str, reason: str | None) -> int:
        rel = ctx.release(r.release_id)
        version = rel.row.version
        n = 0
        for rd in rollout_rows(ctx.s, r).values():
            if rd.status != "admitted":
                continue
            rd.status = "rolled_back"
            d = ctx.s.get(Device, rd.device_id)
            if d is None or d.assigned_rollout_id != r.id:
                continue
            d.assigned_variant_id = rd.prev_variant_id
            d.assigned_rollout_id = None
            if rd.prev_version and rd.prev_version != version:
                d.command, d.command_version = f"rollback:{rd.prev_version}", "=" + rd.prev_version
            else:
                d.command, d.command_version = "rollback", "!" + version
            ctx.nudges.append(d.id)
            n += 1
        self._set_state(ctx, r, "rolled_back", "rollout.rolled_back", actor, reason=reason, devices=n)
        return n

    # --- operator actions ----------------------------------------------------------------------

    _ALLOWED = {
        "pause": ("running", "waiting_approval"),
        "resume": ("paused",),
        "approve": ("waiting_approval",),
        "abort": ACTIVE_STATES,
        "rollback": (*ACTIVE_STATES, "completed", "aborted"),
    }

    def act(self, rollout_id: str, action: str, *, actor: str, reason: str | None = None) -> dict[str, Any]:
        """Apply ``pause``, ``resume``, ``approve``, ``abort`` or ``rollback`` to a rollout."""
        if action not in self._ALLOWED:
            raise RolloutError(
                f"unknown rollout action {action!r}", hint=f"one of {', '.join(self._ALLOWED)}"
            )
        now = self.clock()
        with self.db.write() as s:
            self.db.lock(s, LOCK)
            r = s.get(Rollout, rollout_id, with_for_update=self.db.dialect == "postgresql")
            if r is None:
                raise NotFoundError(
                    f"no rollout {rollout_id!r}", hint="list them with: edgefleet rollout list"
                )
            if r.state not in self._ALLOWED[action]:
                raise ConflictError(
                    f"rollout {r.id} is {r.state}; {action} needs it to be {' or '.join(self._ALLOWED[action])}",
                    hint="see its state with: edgefleet rollout show " + r.id,
                    state=r.state,
                )
            ctx = self._pass(s, now)
            details = {"reason": reason} if reason else {}
            if action == "pause":
                r.paused_at = now
                self._set_state(ctx, r, "paused", "rollout.paused", actor, **details)
            elif action == "resume":
                if r.paused_at is not None:
                    r.wave_started_at += now - r.paused_at  # the soak clock does not run while paused
                r.paused_at = None
                self._set_state(ctx, r, "running", "rollout.resumed", actor, **details)
            elif action == "approve":
                audit(
                    s,
                    "rollout.approved",
                    actor=actor,
                    now=now,
                    rollout_id=r.id,
                    wave=r.wave_index + 2,
                    **details,
                )
                self._advance(ctx, r, actor=actor)
            elif action == "abort":
                kept = self._abort(ctx, r)
                self._set_state(ctx, r, "aborted", "rollout.aborted", actor, kept_on_release=kept, **details)
            elif action == "rollback":
                r.reason = reason or f"manual rollback by {actor}"
                self._rollback(ctx, r, actor=actor, reason=r.reason)
            write_assignments(ctx)
            out = describe_rollout(s, r)
        self._send(ctx.nudges)
        return out

    def _abort(self, ctx: EnginePass, r: Rollout) -> int:
        """Stop: devices already on the release keep it; admitted ones not yet on it keep their old one."""
        version = ctx.release(r.release_id).row.version
        kept = 0
        for rd in rollout_rows(ctx.s, r).values():
            if rd.status != "admitted":
                continue
            d = ctx.s.get(Device, rd.device_id)
            if d is None or d.assigned_rollout_id != r.id:
                continue
            if d.active_version == version:
                kept += 1
                continue
            d.assigned_variant_id = rd.prev_variant_id
            d.assigned_rollout_id = None
            rd.status = "rolled_back"
            ctx.nudges.append(d.id)
        return kept

    # --- reading -------------------------------------------------------------------------------

    def describe(self, rollout_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            r = s.get(Rollout, rollout_id)
            if r is None:
                raise NotFoundError(
                    f"no rollout {rollout_id!r}", hint="list them with: edgefleet rollout list"
                )
            return describe_rollout(s, r, devices=True)

    def list(self, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = select(Rollout).order_by(Rollout.created_at.desc()).limit(limit)
            if state:
                q = q.where(Rollout.state == state)
            return [describe_rollout(s, r) for r in s.scalars(q)]

    def history(self, *, limit: int = 10) -> list[dict[str, Any]]:
        """Recent rollouts with, per wave, its state and the gate figures that decided it."""
        items = self.list(limit=limit)
        if not items:
            return []
        with self.db.read() as s:
            return wave_history(s, items)

    # --- nudges --------------------------------------------------------------------------------

    def _send(self, device_ids: list[str]) -> None:
        if not device_ids:
            return
        try:
            self.notifier.nudge(dict.fromkeys(device_ids))
        except Exception:  # a nudge is an optimisation; polling still delivers the change
            log.exception("sending nudges failed; devices will see the change at their next poll")


def _slim(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if k != "reference" or v is None} | {
        "reference": {k: v for k, v in (ev.get("reference") or {}).items() if k != "raw"} or None,
        "wave_health": {k: v for k, v in ev["wave_health"].items() if k != "raw"},
    }


def _group_reasons(fits: dict[str, FitResult]) -> str:
    groups: dict[str, int] = {}
    for f in fits.values():
        if not f.fits:
            groups[f.reason] = groups.get(f.reason, 0) + 1
    return "; ".join(f"{n} device{'s' if n != 1 else ''}: {why}" for why, n in list(groups.items())[:5])
