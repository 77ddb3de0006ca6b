"""Retraining jobs as the control plane sees them, their rollout proposals, and release lineage.

A retraining job runs where the publisher's targets key is (``edgefleet retrain run``); it reports each
step here, and every step lands in the audit log (``retrain.job.<step>``); the proposal, its approval and
a rejection are steps of the record too (``rollout_proposed``, ``rollout_started``, ``rollout_rejected``),
so the dashboard's Retraining page shows the whole job from the record alone. Its record (parent, snapshot,
steps, proposal) is one JSON row in ``server_state`` (key ``retrain.job.<id>``): jobs are few and written
by one job each. When the new release is registered the job proposes a rollout: it waits for an
operator's ``approve`` (the default), or starts at once where the job's policy says ``auto``.

``lineage(name, version)`` walks the chain of parents through the bundles' manifests in the repository
(parent version, dataset hash, optimization, tags) and joins the retraining jobs that made each release.

Routes: ``/v1/retrain/jobs`` (list, create), ``/v1/retrain/jobs/{id}`` (get), ``.../steps`` (report a
step), ``.../rollout`` (propose, optionally start), ``.../approve``, ``.../reject``, and
``/v1/releases/{name}/{version}/lineage``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select

from edgefleet.errors import ConflictError, InputError, NotFoundError
from edgefleet.server._audit import audit
from edgefleet.server._auth import Operator, Role
from edgefleet.server._http import ERRORS, operator
from edgefleet.server._models import Release, ServerState
from edgefleet.server._schemas import RolloutCreate

__all__ = ["RetrainJobs", "install_retrain"]

_PREFIX = "retrain.job."
_MAX_STEPS = 64
_MAX_DETAILS = 16 << 10  # bytes of JSON one step's details may hold
_MAX_DEPTH = 64  # releases a lineage walk follows
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
Slug = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Viewer = Annotated[Operator, Depends(operator(Role.viewer))]
Deployer = Annotated[Operator, Depends(operator(Role.deployer))]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _bounded(v: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(v, default=str)) > _MAX_DETAILS:
        raise ValueError(f"details are over {_MAX_DETAILS} bytes of JSON")
    return v


class RetrainJobCreate(_In):
    name: str = Field(min_length=1, max_length=64)
    parent_version: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    snapshot: dict[str, Any] = Field(default_factory=dict, description="hash, rows, label counts, source")
    trainer: str = Field("head", max_length=200)
    request_id: str | None = Field(None, max_length=64, description="the drift alert's retraining request")
    rollout: dict[str, Any] = Field(default_factory=dict, description="settings of the rollout to propose")
    auto_rollout: bool = False

    _snap = field_validator("snapshot", "rollout")(_bounded)


class RetrainJobStep(_In):
    step: str = Field(pattern=r"^[a-z_]{1,32}$")
    details: dict[str, Any] = Field(default_factory=dict)

    _details = field_validator("details")(_bounded)


class RetrainRolloutProposal(_In):
    rollout: dict[str, Any] = Field(default_factory=dict)
    start: bool = Field(False, description="start the rollout now instead of waiting for approve")

    _rollout = field_validator("rollout")(_bounded)


class RetrainJobs:
    """Job records, their steps in the audit log, rollout proposals, and lineage queries."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    @property
    def db(self) -> Any:
        return self.ctx.db

    def _now(self) -> float:
        return self.ctx.clock()

    def _row(self, s: Any, job_id: str) -> ServerState:
        row = s.get(ServerState, _PREFIX + job_id)
        if row is None:
            raise NotFoundError(f"no retraining job {job_id}", hint="list them: edgefleet retrain status")
        return row

    def create(self, job_id: str, body: RetrainJobCreate, *, actor: str) -> dict[str, Any]:
        now = self._now()
        rollout_spec = self._rollout_spec(body.name, body.version, body.rollout)
        with self.db.write() as s:
            if s.get(ServerState, _PREFIX + job_id) is not None:
                raise ConflictError(f"retraining job {job_id} exists", hint="a job reports under a new id")
            record = {
                "id": job_id,
                **body.model_dump(mode="json"),
                "rollout": rollout_spec.model_dump(mode="json", exclude={"name", "version"}),
                "created_at": now,
                "created_by": actor,
                "status": "running",
                "steps": [],
                "rollout_id": None,
            }
            s.add(ServerState(key=_PREFIX + job_id, value=record, updated_at=now))
            audit(
                s,
                "retrain.job.created",
                actor=actor,
                now=now,
                job_id=job_id,
                release=f"{body.name} {body.version}",
                parent=f"{body.name} {body.parent_version}",
                request_id=body.request_id,
                snapshot_sha256=body.snapshot.get("sha256"),
                message=f"retraining {body.name} {body.parent_version} -> {body.version} ({body.trainer})",
            )
        return record

    def step(self, job_id: str, body: RetrainJobStep, *, actor: str) -> dict[str, Any]:
        now = self._now()
        with self.db.write() as s:
            row = self._row(s, job_id)
            rec = dict(row.value)
            if rec["status"] in ("failed", "completed", "rejected"):
                raise ConflictError(f"retraining job {job_id} is {rec['status']}", hint="start a new job")
            if len(rec["steps"]) >= _MAX_STEPS:
                raise InputError(f"retraining job {job_id} has {_MAX_STEPS} steps", hint="start a new job")
            rec["steps"] = [*rec["steps"], {"step": body.step, "at": now, **body.details}]
            if body.step == "failed":
                rec["status"] = "failed"
            row.value, row.updated_at = rec, now
            audit(
                s,
                f"retrain.job.{body.step}",
                actor=actor,
                now=now,
                job_id=job_id,
                release=f"{rec['name']} {rec['version']}",
                **{k: v for k, v in body.details.items() if k not in ("job_id", "release")},
            )
            return rec

    def _rollout_spec(self, name: str, version: str, rollout: dict[str, Any]) -> RolloutCreate:
        try:
            return RolloutCreate(**{**rollout, "name": name, "version": version})
        except (ValueError, TypeError) as e:
            raise InputError(
                f"the proposed rollout settings are not valid: {str(e)[:300]}",
                hint="use the settings of POST /v1/rollouts (selector, waves, soak_s, policy, gates...)",
            ) from None

    def propose(self, job_id: str, body: RetrainRolloutProposal, *, actor: str) -> dict[str, Any]:
        """Record the rollout proposal; start it when ``start`` (the job's ``auto`` policy)."""
        now = self._now()
        with self.db.write() as s:
            row = self._row(s, job_id)
            rec = dict(row.value)
            if rec["status"] != "running":
                raise ConflictError(f"retraining job {job_id} is {rec['status']}", hint="start a new job")
            spec = self._rollout_spec(rec["name"], rec["version"], {**rec["rollout"], **body.rollout})
            rec["rollout"] = spec.model_dump(mode="json", exclude={"name", "version"})
            rec["status"] = "proposed"
            rec["steps"] = [
                *rec["steps"],
                {
                    "step": "rollout_proposed",
                    "at": now,
                    "selector": spec.selector,
                    "waves": spec.waves,
                    "auto": body.start,
                },
            ]
            row.value, row.updated_at = rec, now
            audit(
                s,
                "retrain.rollout_proposed",
                actor=actor,
                now=now,
                job_id=job_id,
                release=f"{rec['name']} {rec['version']}",
                selector=spec.selector,
                waves=spec.waves,
                message=f"rollout of {rec['name']} {rec['version']} proposed"
                + (": starting (policy auto)" if body.start else ": waiting for approval"),
            )
        if body.start:
            return self._start(job_id, actor="policy:auto", by=actor)
        return rec

    def approve(self, job_id: str, *, actor: str) -> dict[str, Any]:
        return self._start(job_id, actor=actor, by=actor)

    def _start(self, job_id: str, *, actor: str, by: str) -> dict[str, Any]:
        with self.db.read() as s:
            rec = dict(self._row(s, job_id).value)
        if rec["status"] != "proposed":
            raise ConflictError(
                f"retraining job {job_id} is {rec['status']}, not waiting for approval",
                hint="only a proposed rollout can be approved",
            )
        spec = self._rollout_spec(rec["name"], rec["version"], rec["rollout"])
        rollout = self.ctx.engine.create(spec, actor=by)
        now = self._now()
        with self.db.write() as s:
            row = self._row(s, job_id)
            rec = dict(row.value)
            rec["status"], rec["rollout_id"] = "completed", rollout["id"]
            rec["steps"] = [
                *rec["steps"],
                {"step": "rollout_started", "at": now, "rollout_id": rollout["id"], "by": actor},
            ]
            row.value, row.updated_at = rec, now
            audit(
                s,
                "retrain.rollout_started",
                actor=actor,
                now=now,
                job_id=job_id,
                rollout_id=rollout["id"],
                release=f"{rec['name']} {rec['version']}",
                message=f"rollout {rollout['id']} of {rec['name']} {rec['version']} started ({actor})",
            )
        return rec

    def reject(self, job_id: str, *, actor: str) -> dict[str, Any]:
        now = self._now()
        with self.db.write() as s:
            row = self._row(s, job_id)
            rec = dict(row.value)
            if rec["status"] != "proposed":
                raise ConflictError(
                    f"retraining job {job_id} is {rec['status']}",
                    hint="only a proposed rollout can be rejected",
                )
            rec["status"] = "rejected"
            rec["steps"] = [*rec["steps"], {"step": "rollout_rejected", "at": now, "by": actor}]
            row.value, row.updated_at = rec, now
            audit(
                s,
                "retrain.rollout_rejected",
                actor=actor,
                now=now,
                job_id=job_id,
                message=f"rejected by {actor}",
            )
            return rec

    def jobs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        with self.db.read() as s:
            q = (
                select(ServerState)
                .where(ServerState.key.like(_PREFIX + "%"))
                .order_by(ServerState.updated_at.desc())
                .limit(limit)
            )
            return [r.value for r in s.scalars(q)]

    def job(self, job_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            return dict(self._row(s, job_id).value)

    # --- lineage -------------------------------------------------------------------------------

    def lineage(self, name: str, version: str) -> dict[str, Any]:
        """The chain from ``name`` ``version`` back through its parents, newest first.

        Raises:
            NotFoundError: ``name`` ``version`` is not published.
        """
        repo = self.ctx.repo.open()
        published = repo.list_versions(name)
        jobs = {j["id"]: j for j in self.jobs(limit=1000) if j.get("name") == name}
        with self.db.read() as s:
            registered = {
                r.version: r.registered_at for r in s.scalars(select(Release).where(Release.name == name))
            }
        chain, seen, v = [], set(), version
        while v is not None and v not in seen and len(chain) < _MAX_DEPTH:
            seen.add(v)
            found = [b for b in published if b.version == v]
            if not found:
                if not chain:
                    raise NotFoundError(
                        f"{name} {version} is not published", hint="list releases: edgefleet release list"
                    )
                chain.append({"version": v, "published": False})
                break
            node = _release_node(repo, found, registered.get(v), jobs)
            chain.append(node)
            v = node["parent_version"]
        return {"name": name, "version": version, "chain": chain}


def _release_node(
    repo: Any, found: list[Any], registered_at: float | None, jobs: dict[str, Any]
) -> dict[str, Any]:
    variants = []
    tags: dict[str, str] = {}
    parent = dataset = None
    for b in found:
        m = repo.show(b.name, b.version, b.variant).manifest
        if m is None:
            continue
        parent = parent or m.lineage.parent_version
        dataset = dataset or m.lineage.dataset_sha256
        tags.update(m.lineage.tags or {})
        variants.append(
            {
                "variant": b.variant,
                "target": b.target_path,
                "sha256": b.sha256,
                "optimization": m.lineage.optimization,
                "accuracy": m.metrics.accuracy,
                "size_bytes": m.metrics.size_bytes,
            }
        )
    job = jobs.get(tags.get("retrain_job", ""))
    return {
        "version": found[0].version,
        "published": True,
        "registered_at": registered_at,
        "parent_version": parent,
        "dataset_sha256": dataset,
        "data_snapshot": tags.get("data_snapshot"),
        "labels_used": int(tags["labels_used"]) if tags.get("labels_used", "").isdigit() else None,
        "label_counts": _json_or_none(tags.get("label_counts")),
        "trainer": tags.get("trainer"),
        "trained": tags.get("trained"),
        "retrain_job": tags.get("retrain_job"),
        "retrain_request": tags.get("retrain_request") or (job or {}).get("request_id"),
        "mlflow_run_id": tags.get("mlflow_run_id"),
        "mlflow_model": tags.get("mlflow_model"),
        "job": {k: job.get(k) for k in ("id", "status", "created_at", "created_by", "rollout_id", "steps")}
        if job
        else None,
        "variants": variants,
    }


def _json_or_none(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def retrain_router(jobs: RetrainJobs) -> APIRouter:
    r = APIRouter(tags=["retrain"], responses=ERRORS)

    @r.get("/v1/retrain/jobs", summary="Retraining jobs, newest first")
    def list_jobs(_: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return jobs.jobs(limit=limit)

    @r.get("/v1/retrain/jobs/{job_id}", summary="One retraining job with its steps")
    def get_job(job_id: JobId, _: Viewer) -> dict[str, Any]:
        return jobs.job(job_id)

    @r.put("/v1/retrain/jobs/{job_id}", status_code=201, summary="Start recording a retraining job")
    def create_job(job_id: JobId, body: RetrainJobCreate, me: Deployer) -> dict[str, Any]:
        return jobs.create(job_id, body, actor=me.actor)

    @r.post("/v1/retrain/jobs/{job_id}/steps", summary="Record a step of a job (audited)")
    def job_step(job_id: JobId, body: RetrainJobStep, me: Deployer) -> dict[str, Any]:
        return jobs.step(job_id, body, actor=me.actor)

    @r.post(
        "/v1/retrain/jobs/{job_id}/rollout", summary="Propose the new release's rollout (start: policy auto)"
    )
    def propose(job_id: JobId, body: RetrainRolloutProposal, me: Deployer) -> dict[str, Any]:
        return jobs.propose(job_id, body, actor=me.actor)

    @r.post("/v1/retrain/jobs/{job_id}/approve", summary="Approve a proposed rollout: it starts")
    def approve(job_id: JobId, me: Deployer) -> dict[str, Any]:
        return jobs.approve(job_id, actor=me.actor)

    @r.post("/v1/retrain/jobs/{job_id}/reject", summary="Reject a proposed rollout")
    def reject(job_id: JobId, me: Deployer) -> dict[str, Any]:
        return jobs.reject(job_id, actor=me.actor)

    @r.get("/v1/releases/{name}/{version}/lineage", summary="Parents, data snapshots, labels, optimize runs")
    def lineage(name: Slug, version: Slug, _: Viewer) -> dict[str, Any]:
        return jobs.lineage(name, version)

    return r


def install_retrain(app: FastAPI, ctx: Any) -> RetrainJobs:
    """Add the retraining-job and lineage routes to a control-plane app; returns the service."""
    jobs = RetrainJobs(ctx)
    app.state.retrain = jobs
    app.include_router(retrain_router(jobs))
    return jobs
