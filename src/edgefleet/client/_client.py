"""``Client``: the operator API of a running control plane over HTTP (httpx), errors as edgefleet errors."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from edgefleet import errors
from edgefleet.errors import AuthError, EdgefleetError, ServerError

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_URL", "Client", "error_from_response"]

DEFAULT_URL = "http://127.0.0.1:8700"
DEFAULT_TOKEN_FILE = Path("edgefleet-server") / "admin-token"

Json = dict[str, Any]
RolloutAction = Literal["pause", "resume", "abort", "rollback", "approve"]

# The server answers an error with ``{"error": code, "message", "hint", "details"}`` where ``code`` is
# the raised class's ``code``; answers with a code no class has fall back on their status.
_BY_CODE: dict[str, type[EdgefleetError]] = {
    cls.code: cls for cls in (getattr(errors, name) for name in errors.__all__) if cls is not EdgefleetError
}
_BY_STATUS: dict[int, type[EdgefleetError]] = {
    400: errors.InputError,
    401: errors.AuthError,
    403: errors.ForbiddenError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    413: errors.PayloadTooLargeError,
    422: errors.ValidationError,
    429: errors.RateLimitedError,
}


def error_from_response(status: int, body: Any) -> EdgefleetError:
    """The edgefleet error an HTTP error answer stands for (its code's class, else its status's)."""
    if not isinstance(body, dict):
        body = {"message": str(body)[:300]}
    code = body.get("error")
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    cls = cls or _BY_STATUS.get(status, ServerError)
    err = cls(str(body.get("message") or f"HTTP {status}"), hint=body.get("hint"))
    details = body.get("details")
    err.details = details if isinstance(details, dict) else {}
    if "retry_after" in err.details and hasattr(err, "retry_after"):
        err.retry_after = float(err.details["retry_after"])
    return err


def _read_token(token_file: str | os.PathLike[str] | None) -> str:
    path = Path(token_file) if token_file else DEFAULT_TOKEN_FILE
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token
    raise AuthError("no operator token", hint="pass --token, set EDGEFLEET_TOKEN, or --token-file PATH")


class Client:
    """A client of a control plane's operator API.

    Args:
        url: the control plane; default ``EDGEFLEET_SERVER_URL``, else ``http://127.0.0.1:8700``.
        token: an operator token (``efo_...``); default ``EDGEFLEET_TOKEN``, else read from ``token_file``.
        token_file: a file holding the token; default ``EDGEFLEET_TOKEN_FILE``, else
            ``edgefleet-server/admin-token`` when it exists.
        timeout: seconds per request.
        ca_file: the control plane's CA certificate (``ca.crt`` from ``edgefleet certs init``) that an
            ``https`` server's certificate must chain to; default ``EDGEFLEET_CA_FILE``, else the system's
            trust store.

    Raises:
        AuthError: no token given and none found.

    Every method returns the server's JSON (dicts and lists, as the API documents them at ``/docs``)
    and raises the ``edgefleet.errors`` class of the server's error answer, or ``ServerError`` when the
    server cannot be reached. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        import httpx

        self.url = (url or os.environ.get("EDGEFLEET_SERVER_URL") or DEFAULT_URL).rstrip("/")
        token = (
            token
            or os.environ.get("EDGEFLEET_TOKEN")
            or _read_token(token_file or os.environ.get("EDGEFLEET_TOKEN_FILE"))
        )
        self._httpx = httpx
        ca_file = ca_file or os.environ.get("EDGEFLEET_CA_FILE") or None
        verify: Any = True
        if ca_file is not None and self.url.startswith("https:"):
            from edgefleet.tls import client_context

            verify = client_context(ca_file)  # the pinned CA only, never the system store
        self._http: httpx.Client = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}, verify=verify
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """Send one request to the API; returns the decoded JSON answer (None for an empty one)."""
        try:
            r = self._http.request(method, path, **kw)
        except self._httpx.HTTPError as e:
            raise ServerError(
                f"cannot reach the control plane at {self.url}: {e}",
                hint="start it with `edgefleet server run`, or pass --server URL",
                url=self.url,
            ) from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"message": r.text[:300]}
            raise error_from_response(r.status_code, body)
        return r.json() if r.content else None

    # --- identity and tokens -------------------------------------------------------------------

    def whoami(self) -> Json:
        return self.request("GET", "/v1/whoami")

    def create_enrollment_token(
        self, *, tags: dict[str, str] | None = None, expires_in_s: float | None = None
    ) -> Json:
        """A one-time enrollment token (``token`` is shown only here) giving its devices ``tags``."""
        body: Json = {"tags": tags or {}}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        return self.request("POST", "/v1/enrollment-tokens", json=body)

    def enrollment_tokens(self) -> list[Json]:
        return self.request("GET", "/v1/enrollment-tokens")

    def revoke_enrollment_token(self, token_id: str) -> Json:
        return self.request("DELETE", f"/v1/enrollment-tokens/{token_id}")

    # --- devices -------------------------------------------------------------------------------

    def devices(self, *, selector: str | None = None, status: str | None = None, limit: int = 100) -> Json:
        """``{"total": n, "devices": [...]}``: devices matching ``selector`` and ``status``."""
        params: Json = {"limit": limit}
        if selector:
            params["selector"] = selector
        if status:
            params["status"] = status
        return self.request("GET", "/v1/devices", params=params)

    def device(self, device_id: str) -> Json:
        return self.request("GET", f"/v1/devices/{device_id}")

    def tag_device(self, device_id: str, tags: dict[str, str]) -> Json:
        """Replace a device's tags."""
        return self.request("PATCH", f"/v1/devices/{device_id}", json={"tags": tags})

    def revoke_device(self, device_id: str) -> Json:
        return self.request("POST", f"/v1/devices/{device_id}/revoke")

    # --- releases ------------------------------------------------------------------------------

    def register_release(
        self, name: str, version: str, *, device_classes: dict[str, list[str]] | None = None
    ) -> Json:
        """Register a published name+version (the server reads its variants from the TUF targets)."""
        body: Json = {"name": name, "version": version}
        if device_classes:
            body["device_classes"] = device_classes
        return self.request("POST", "/v1/releases", json=body)

    def releases(self) -> list[Json]:
        return self.request("GET", "/v1/releases")

    def repository(self) -> Json:
        """The TUF repository's status: role versions and expiry."""
        return self.request("GET", "/v1/repository")

    # --- rollouts ------------------------------------------------------------------------------

    def create_rollout(
        self,
        name: str,
        version: str,
        *,
        selector: str | None = None,
        waves: list[float] | None = None,
        soak_s: float | list[float] | None = None,
        policy: str | None = None,
        on_fail: str | None = None,
        gates: dict[str, Any] | None = None,
        device_gates: dict[str, Any] | None = None,
        force: bool | None = None,
    ) -> Json:
        """Start a rollout of ``name`` ``version``; settings left out take the server's defaults.

        ``force``: a forced update (security fix) that ignores the devices' update policies."""
        body: Json = {"name": name, "version": version}
        optional = {
            "selector": selector,
            "waves": waves,
            "soak_s": soak_s,
            "policy": policy,
            "on_fail": on_fail,
            "gates": gates,
            "device_gates": device_gates,
            "force": force,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return self.request("POST", "/v1/rollouts", json=body)

    def rollouts(self, *, state: str | None = None) -> list[Json]:
        """Rollouts, newest first."""
        return self.request("GET", "/v1/rollouts", params={"state": state} if state else None)

    def rollout(self, rollout_id: str) -> Json:
        """A rollout with its current wave's evaluation, members and devices that do not fit."""
        return self.request("GET", f"/v1/rollouts/{rollout_id}")

    def rollout_audit(self, rollout_id: str) -> list[Json]:
        return self.request("GET", f"/v1/rollouts/{rollout_id}/audit")

    def act_on_rollout(self, rollout_id: str, action: RolloutAction, *, reason: str | None = None) -> Json:
        """Pause, resume, abort, roll back or approve (the next wave of) a rollout."""
        return self.request("POST", f"/v1/rollouts/{rollout_id}/{action}", json={"reason": reason})

    def pause_rollout(self, rollout_id: str, *, reason: str | None = None) -> Json:
        return self.act_on_rollout(rollout_id, "pause", reason=reason)

    def resume_rollout(self, rollout_id: str, *, reason: str | None = None) -> Json:
        return self.act_on_rollout(rollout_id, "resume", reason=reason)

    def abort_rollout(self, rollout_id: str, *, reason: str | None = None) -> Json:
        return self.act_on_rollout(rollout_id, "abort", reason=reason)

    # --- fleet view ----------------------------------------------------------------------------

    def fleet_overview(self) -> Json:
        return self.request("GET", "/v1/fleet/overview")

    def fleet_drift(self, *, by: str = "device_class,region", range_s: float = 3600.0) -> Json:
        return self.request("GET", "/v1/fleet/drift", params={"by": by, "range_s": range_s})

    def fleet_outliers(self, *, range_s: float = 3600.0) -> Json:
        return self.request("GET", "/v1/fleet/outliers", params={"range_s": range_s})

    def fleet_telemetry(self, *, by: str = "release", range_s: float = 3600.0, **filters: str) -> Json:
        """Telemetry windows merged per group (``by``) over the last ``range_s`` seconds.

        ``filters``: ``device_id``, ``device_class``, ``region`` or ``release`` narrow the windows.
        """
        return self.request("GET", "/v1/fleet/telemetry", params={"by": by, "range_s": range_s, **filters})

    def alerts(self, *, state: str = "open") -> list[Json]:
        return self.request("GET", "/v1/fleet/alerts", params={"state": state})

    def evaluate_alerts(self) -> Json:
        """Evaluate the alert rules now (deployer role)."""
        return self.request("POST", "/v1/fleet/alerts/evaluate")

    def maintain(self) -> Json:
        """Apply telemetry retention and downsampling now (admin role)."""
        return self.request("POST", "/v1/fleet/maintenance")

    def retrain_requests(self, *, status: str | None = None) -> list[Json]:
        return self.request(
            "GET", "/v1/fleet/retrain-requests", params={"status": status} if status else None
        )

    def decide_retrain(self, request_id: str, decision: Literal["approve", "reject"]) -> Json:
        """Approve (and run the retraining hook) or reject a pending retraining request (admin role)."""
        return self.request("POST", f"/v1/fleet/retrain-requests/{request_id}/{decision}")

    # --- retraining jobs and lineage (issue 13) ------------------------------------------------

    def create_retrain_job(self, job_id: str, **record: Any) -> Json:
        """Start recording retraining job ``job_id`` (16 hex digits): name, parent_version, version, snapshot..."""
        return self.request("PUT", f"/v1/retrain/jobs/{job_id}", json=record)

    def retrain_job_step(self, job_id: str, step: str, details: Json | None = None) -> Json:
        """Record one step of a job (it lands in the audit log as ``retrain.job.<step>``)."""
        return self.request(
            "POST", f"/v1/retrain/jobs/{job_id}/steps", json={"step": step, "details": details or {}}
        )

    def propose_retrain_rollout(
        self, job_id: str, rollout: Json | None = None, *, start: bool = False
    ) -> Json:
        """Propose the job's release for rollout; it waits for :meth:`approve_retrain_job` unless ``start``."""
        return self.request(
            "POST", f"/v1/retrain/jobs/{job_id}/rollout", json={"rollout": rollout or {}, "start": start}
        )

    def approve_retrain_job(self, job_id: str) -> Json:
        """Approve a job's proposed rollout: the rollout starts (its id is the job's ``rollout_id``)."""
        return self.request("POST", f"/v1/retrain/jobs/{job_id}/approve")

    def reject_retrain_job(self, job_id: str) -> Json:
        return self.request("POST", f"/v1/retrain/jobs/{job_id}/reject")

    def retrain_jobs(self, *, limit: int = 50) -> list[Json]:
        return self.request("GET", "/v1/retrain/jobs", params={"limit": limit})

    def retrain_job(self, job_id: str) -> Json:
        return self.request("GET", f"/v1/retrain/jobs/{job_id}")

    # --- samples, labels and live accuracy (issue 13) ------------------------------------------

    def samples(self, *, limit: int = 100, **filters: Any) -> list[Json]:
        """Samples, newest first; filters: device_id, release (``name@version``), predicted, label,
        labelled (bool), reason, max_confidence, before_id."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/v1/samples", params={**params, "limit": limit})

    def sample(self, request_id: str) -> Json:
        return self.request("GET", f"/v1/samples/{request_id}")

    def sample_stats(self, *, release: str | None = None) -> Json:
        return self.request("GET", "/v1/samples/stats", params={"release": release} if release else None)

    def label_samples(self, request_ids: list[str], label: str | None) -> Json:
        """Label samples (``None`` clears the label: undo); audited."""
        return self.request("POST", "/v1/samples/labels", json={"request_ids": request_ids, "label": label})

    def feedback(self, request_id: str, *, label: str | None = None, outcome: Any = None) -> Json:
        """An application's ground truth for a sampled request: its true label and/or a delayed outcome."""
        body: Json = {"request_id": request_id}
        if label is not None:
            body["label"] = label
        if outcome is not None:
            body["outcome"] = outcome
        return self.request("POST", "/v1/feedback", json=body)

    def delete_device_data(self, device_id: str) -> Json:
        """Erase a device's samples, labels and telemetry (admin role; audited)."""
        return self.request("DELETE", f"/v1/devices/{device_id}/data")

    def export_samples(
        self, *, release: str | None = None, labelled: bool | None = None, limit: int = 100
    ) -> list[Json]:
        """Samples as Label Studio tasks (inputs inlined as data URIs)."""
        params: Json = {"format": "label-studio", "limit": limit}
        if release:
            params["release"] = release
        if labelled is not None:
            params["labelled"] = labelled
        return self.request("GET", "/v1/samples/export", params=params)

    def import_labels(self, tasks: list[Json], *, chunk: int = 500) -> Json:
        """Apply the labels of Label Studio tasks (sent ``chunk`` at a time, without their inputs)."""
        total: Json = {"labelled": 0, "unchanged": 0, "unlabelled": 0, "unknown": 0}
        slim = [
            {
                "data": {"request_id": (t.get("data") or {}).get("request_id")},
                "annotations": t.get("annotations"),
            }
            if isinstance(t, dict)
            else t
            for t in tasks
        ]
        for i in range(0, len(slim), chunk):
            got = self.request("POST", "/v1/samples/import-labels", json=slim[i : i + chunk])
            for k in total:
                total[k] += got.get(k, 0)
        return total

    def sample_policies(self) -> list[Json]:
        return self.request("GET", "/v1/sample-policies")

    def set_sample_policy(self, name: str, policy: Json, *, selector: str = "*", priority: int = 0) -> Json:
        """Set the sample policy of the devices ``selector`` matches (no new release needed)."""
        return self.request(
            "PUT",
            f"/v1/sample-policies/{name}",
            json={"selector": selector, "priority": priority, "policy": policy},
        )

    def device_policies(self) -> list[Json]:
        """Power/thermal policies per device group, highest priority first."""
        return self.request("GET", "/v1/device-policies")

    def set_device_policy(self, name: str, policy: Json, *, selector: str = "*", priority: int = 0) -> Json:
        """Push a ``power.Policy`` document to the devices ``selector`` matches (no new release needed)."""
        return self.request(
            "PUT",
            f"/v1/device-policies/{name}",
            json={"selector": selector, "priority": priority, "policy": policy},
        )

    def delete_device_policy(self, name: str) -> Json:
        return self.request("DELETE", f"/v1/device-policies/{name}")

    def delete_sample_policy(self, name: str) -> Json:
        return self.request("DELETE", f"/v1/sample-policies/{name}")

    def update_policies(self) -> list[Json]:
        """Update policies per device group, highest priority first."""
        return self.request("GET", "/v1/update-policies")

    def update_policy(self, name: str) -> Json:
        return self.request("GET", f"/v1/update-policies/{name}")

    def set_update_policy(self, name: str, policy: Json, *, selector: str = "*", priority: int = 0) -> Json:
        """Set the update policy (windows, metered/charging, pin or deferral) of the devices ``selector``
        matches."""
        return self.request(
            "PUT",
            f"/v1/update-policies/{name}",
            json={"selector": selector, "priority": priority, "policy": policy},
        )

    def delete_update_policy(self, name: str) -> Json:
        return self.request("DELETE", f"/v1/update-policies/{name}")

    def fl_jobs(self) -> list[Json]:
        """Federated jobs, newest first (rounds, accuracy, ε so far)."""
        return self.request("GET", "/v1/fl/jobs")

    def fl_job(self, job_id: str) -> Json:
        return self.request("GET", f"/v1/fl/jobs/{job_id}")

    def create_fl_job(
        self, job_id: str, superlink: str, *, duration_s: float, selector: str = "*", spec: Json | None = None
    ) -> Json:
        """Register a federated job: the selected devices are told to join ``superlink`` (host:port)."""
        return self.request(
            "POST",
            "/v1/fl/jobs",
            json={
                "job_id": job_id,
                "superlink": superlink,
                "selector": selector,
                "duration_s": duration_s,
                "spec": spec or {},
            },
        )

    def fl_node_keys(self, job_id: str) -> list[Json]:
        """The SuperNode public keys the job's selected devices sent ({device_id, public_key, registered})."""
        return self.request("GET", f"/v1/fl/jobs/{job_id}/node-keys")

    def fl_node_keys_registered(self, job_id: str, keys: list[Json]) -> Json:
        """Tell the devices holding ``keys`` ({device_id, public_key}) that the SuperLink accepts them now."""
        return self.request("POST", f"/v1/fl/jobs/{job_id}/node-keys/registered", json={"keys": keys})

    def fl_job_progress(self, job_id: str, rounds: list[Json]) -> Json:
        return self.request("POST", f"/v1/fl/jobs/{job_id}/progress", json={"rounds": rounds})

    def stop_fl_job(
        self,
        job_id: str,
        *,
        state: str = "stopped",
        reason: str | None = None,
        rounds: list[Json] | None = None,
    ) -> Json:
        """End a federated job (``finished``/``failed`` from ``fl start``; ``stopped`` by an operator)."""
        return self.request(
            "POST", f"/v1/fl/jobs/{job_id}/stop", json={"state": state, "reason": reason, "rounds": rounds}
        )

    def accuracy(self, *, release: str | None = None, by: str = "release") -> list[Json]:
        """Live accuracy from labelled samples per release (``by``: also device_class, region)."""
        params: Json = {"by": by}
        if release:
            params["release"] = release
        return self.request("GET", "/v1/accuracy", params=params)

    def sample_input(self, request_id: str) -> bytes:
        """A sampled request's stored input bytes (samples sent with privacy ``raw``)."""
        try:
            r = self._http.get(f"/v1/samples/{request_id}/input")
        except self._httpx.HTTPError as e:
            raise ServerError(f"cannot reach the control plane at {self.url}: {e}", url=self.url) from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"message": r.text[:300]}
            raise error_from_response(r.status_code, body)
        return r.content

    def release_lineage(self, name: str, version: str) -> Json:
        """``{"chain": [...]}``: the release and its parents with data snapshots, labels and optimize runs."""
        return self.request("GET", f"/v1/releases/{name}/{version}/lineage")
