"""HTTP surface of samples, feedback and live accuracy (issue 13); ``install_samples(app, ctx)`` wires it.

Device routes (device token or client certificate, like telemetry):

* ``POST /v1/devices/{id}/samples`` — upload a ``SampleUpload``; answers ``{accepted, duplicate, over_quota}``.
* ``GET /v1/devices/{id}/sample-policy`` — the device group's policy ``{source, policy, etag}``.
* ``POST /v1/devices/{id}/feedback`` — ``FeedbackIn`` for one of the device's own samples.

Operator routes (operator token; viewer reads, deployer labels and sets policies, admin erases):

* ``GET /v1/samples`` (filters: device_id, release, predicted, label, labelled, reason, max_confidence,
  limit, before_id), ``GET /v1/samples/stats``, ``GET /v1/samples/{request_id}``,
  ``GET /v1/samples/{request_id}/input`` (the input's bytes), ``GET /v1/samples/export`` (Label Studio tasks).
* ``POST /v1/feedback`` (an application's ``FeedbackIn``), ``POST /v1/samples/labels`` (``LabelIn``),
  ``POST /v1/samples/import-labels`` (a Label Studio export).
* ``DELETE /v1/devices/{id}/data`` — erase a device's samples, labels and telemetry (audited).
* ``PUT|DELETE /v1/sample-policies/{name}``, ``GET /v1/sample-policies``.
* ``GET /v1/accuracy`` — live accuracy per release (``by`` also device_class / region), see ``_accuracy``.

The services are on ``app.state.samples`` (``SampleStore``) and ``app.state.labels`` (``LabelService``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Path, Query
from fastapi.responses import Response

from edgefleet.server._accuracy import accuracy_report
from edgefleet.server._auth import Operator, Role
from edgefleet.server._feedback import FeedbackIn, LabelIn, LabelService, export_label_studio
from edgefleet.server._http import DEVICE_ID_RE, ERRORS, AuthenticatedDevice, operator
from edgefleet.server._samples import (
    REQUEST_ID_PATTERN,
    SamplePolicyIn,
    SampleStore,
    SampleStoreConfig,
    SampleUpload,
)

__all__ = ["install_samples"]

Viewer = Annotated[Operator, Depends(operator(Role.viewer))]
Deployer = Annotated[Operator, Depends(operator(Role.deployer))]
Admin = Annotated[Operator, Depends(operator(Role.admin))]
RequestId = Annotated[str, Path(pattern=REQUEST_ID_PATTERN)]
PolicyName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,63}$")]
Text = Annotated[str | None, Query(max_length=160)]
T = ["samples"]
DeviceId = Annotated[str, Path(min_length=1, max_length=64, pattern=DEVICE_ID_RE.pattern)]


def install_samples(app: FastAPI, ctx: Any, config: SampleStoreConfig | None = None) -> SampleStore:
    """Add the sample, feedback, policy and accuracy routes to a control-plane app; returns the store."""
    store = SampleStore(ctx.db, ctx.blobs, config=config, clock=ctx.clock)
    labels = LabelService(ctx.db, clock=ctx.clock)
    app.state.samples, app.state.labels = store, labels

    @app.post("/v1/devices/{device_id}/samples", tags=T, responses=ERRORS, summary="Upload sampled requests")
    def upload(device_id: DeviceId, batch: SampleUpload, cred: AuthenticatedDevice) -> dict[str, int]:
        return store.upload(device_id, batch)

    @app.get(
        "/v1/devices/{device_id}/sample-policy",
        tags=T,
        responses=ERRORS,
        summary="The device's sample policy",
    )
    def device_policy(device_id: DeviceId, cred: AuthenticatedDevice) -> dict[str, Any]:
        return store.policy_for(device_id)

    @app.post(
        "/v1/devices/{device_id}/feedback", tags=T, responses=ERRORS, summary="Ground truth from a device"
    )
    def device_feedback(device_id: DeviceId, body: FeedbackIn, cred: AuthenticatedDevice) -> dict[str, Any]:
        return labels.feedback(body, source="device", actor=f"device:{device_id}", device_id=device_id)

    @app.post("/v1/feedback", tags=T, responses=ERRORS, summary="Ground truth from an application")
    def app_feedback(body: FeedbackIn, me: Deployer) -> dict[str, Any]:
        return labels.feedback(body, source="application", actor=me.actor)

    @app.get("/v1/samples", tags=T, responses=ERRORS, summary="Samples, newest first")
    def list_samples(
        _: Viewer,
        device_id: Text = None,
        release: Text = None,
        predicted: Text = None,
        label: Text = None,
        labelled: bool | None = None,
        reason: Literal["random", "low_confidence", "escalated"] | None = None,
        max_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_id: Annotated[int | None, Query(ge=0)] = None,
    ) -> list[dict[str, Any]]:
        return store.list(
            device_id=device_id,
            release=release,
            predicted=predicted,
            label=label,
            labelled=labelled,
            reason=reason,
            max_confidence=max_confidence,
            limit=limit,
            before_id=before_id,
        )

    @app.get("/v1/samples/stats", tags=T, responses=ERRORS, summary="Sample counts and stored bytes")
    def sample_stats(_: Viewer, release: Text = None) -> dict[str, Any]:
        return store.stats(release=release)

    @app.get("/v1/samples/export", tags=T, responses=ERRORS, summary="Samples as Label Studio tasks")
    def export(
        _: Viewer,
        format: Literal["label-studio"] = "label-studio",  # noqa: A002 - the query parameter's name
        release: Text = None,
        labelled: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return export_label_studio(store, store.list(release=release, labelled=labelled, limit=limit))

    @app.post(
        "/v1/samples/import-labels", tags=T, responses=ERRORS, summary="Labels from a Label Studio export"
    )
    def import_labels(me: Deployer, tasks: Annotated[Any, Body()]) -> dict[str, Any]:
        return labels.import_label_studio(tasks, actor=me.actor)

    @app.post("/v1/samples/labels", tags=T, responses=ERRORS, summary="Label (or clear) samples, audited")
    def label_samples(body: LabelIn, me: Deployer) -> dict[str, Any]:
        return labels.label(body, actor=me.actor)

    @app.get("/v1/samples/{request_id}", tags=T, responses=ERRORS, summary="One sample with its scores")
    def get_sample(request_id: RequestId, _: Viewer) -> dict[str, Any]:
        return store.get(request_id)

    @app.get("/v1/samples/{request_id}/input", tags=T, responses=ERRORS, summary="A sample's input bytes")
    def get_input(request_id: RequestId, _: Viewer) -> Response:
        data, ctype = store.payload(request_id)
        return Response(data, media_type=ctype, headers={"X-Content-Type-Options": "nosniff"})

    @app.delete("/v1/devices/{device_id}/data", tags=T, responses=ERRORS, summary="Erase a device's data")
    def delete_device_data(device_id: DeviceId, me: Admin) -> dict[str, int]:
        return store.delete_device(device_id, actor=me.actor)

    @app.get("/v1/sample-policies", tags=T, responses=ERRORS, summary="Sample policies per device group")
    def list_policies(_: Viewer) -> list[dict[str, Any]]:
        return store.policies()

    @app.put("/v1/sample-policies/{name}", tags=T, responses=ERRORS, summary="Set a device group's policy")
    def put_policy(name: PolicyName, body: SamplePolicyIn, me: Deployer) -> dict[str, Any]:
        return store.put_policy(name, body, actor=me.actor)

    @app.delete("/v1/sample-policies/{name}", tags=T, responses=ERRORS, summary="Remove a group's policy")
    def delete_policy(name: PolicyName, me: Deployer) -> dict[str, Any]:
        return store.delete_policy(name, actor=me.actor)

    @app.get("/v1/accuracy", tags=T, responses=ERRORS, summary="Live accuracy from labelled samples")
    def accuracy(
        _: Viewer,
        release: Text = None,
        by: Annotated[
            str, Query(pattern=r"^(release|device_class|region)(,(device_class|region))*$")
        ] = "release",
        bins: Annotated[int, Query(ge=2, le=50)] = 10,
    ) -> list[dict[str, Any]]:
        return accuracy_report(ctx.db, release=release, by=by.split(","), bins=bins)

    return store
