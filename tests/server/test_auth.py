"""Access control of every endpoint, enrollment tokens, device tokens, operator roles."""

from __future__ import annotations

import hashlib
import stat
import threading
from pathlib import Path

import pytest
from servertools import hardware

# Every route of the app and who may call it; a test checks this table covers the whole app.
#   public: no credentials; device: the device's own token; device|viewer: own token or viewer role
ACCESS = {
    ("GET", "/healthz"): "public",
    ("POST", "/v1/enroll"): "public",
    ("GET", "/repository/metadata/{path:path}"): "public",
    ("HEAD", "/repository/metadata/{path:path}"): "public",
    ("GET", "/repository/targets/{path:path}"): "public",
    ("HEAD", "/repository/targets/{path:path}"): "public",
    ("POST", "/v1/devices/{device_id}/heartbeat"): "device",
    ("POST", "/v1/devices/{device_id}/telemetry"): "device",
    ("POST", "/v1/devices/{device_id}/certificate"): "device",
    ("GET", "/v1/devices/{device_id}"): "device|viewer",
    ("GET", "/v1/devices/{device_id}/telemetry"): "device|viewer",
    ("GET", "/metrics"): "viewer",
    ("GET", "/v1/whoami"): "viewer",
    ("GET", "/v1/devices"): "viewer",
    ("GET", "/v1/releases"): "viewer",
    ("GET", "/v1/releases/{name}/{version}"): "viewer",
    ("GET", "/v1/repository"): "viewer",
    ("GET", "/v1/rollouts"): "viewer",
    ("GET", "/v1/rollouts/{rollout_id}"): "viewer",
    ("GET", "/v1/rollouts/{rollout_id}/audit"): "viewer",
    ("GET", "/v1/audit"): "viewer",
    ("PATCH", "/v1/devices/{device_id}"): "deployer",
    ("POST", "/v1/devices/{device_id}/nudge"): "deployer",
    ("POST", "/v1/releases"): "deployer",
    ("POST", "/v1/rollouts"): "deployer",
    ("POST", "/v1/rollouts/{rollout_id}/{action}"): "deployer",
    ("POST", "/v1/operator-tokens"): "admin",
    ("GET", "/v1/operator-tokens"): "admin",
    ("DELETE", "/v1/operator-tokens/{token_id}"): "admin",
    ("POST", "/v1/enrollment-tokens"): "admin",
    ("GET", "/v1/enrollment-tokens"): "admin",
    ("DELETE", "/v1/enrollment-tokens/{token_id}"): "admin",
    ("POST", "/v1/devices/{device_id}/revoke"): "admin",
    ("POST", "/v1/repository/refresh"): "admin",
    # samples, ground truth and live accuracy (issue 13, server/_samples_api.py)
    ("POST", "/v1/devices/{device_id}/samples"): "device",
    ("GET", "/v1/devices/{device_id}/sample-policy"): "device",
    ("POST", "/v1/devices/{device_id}/feedback"): "device",
    ("POST", "/v1/feedback"): "deployer",
    ("GET", "/v1/samples"): "viewer",
    ("GET", "/v1/samples/stats"): "viewer",
    ("GET", "/v1/samples/export"): "viewer",
    ("POST", "/v1/samples/import-labels"): "deployer",
    ("POST", "/v1/samples/labels"): "deployer",
    ("GET", "/v1/samples/{request_id}"): "viewer",
    ("GET", "/v1/samples/{request_id}/input"): "viewer",
    ("DELETE", "/v1/devices/{device_id}/data"): "admin",
    ("GET", "/v1/sample-policies"): "viewer",
    ("PUT", "/v1/sample-policies/{name}"): "deployer",
    ("DELETE", "/v1/sample-policies/{name}"): "deployer",
    ("GET", "/v1/update-policies"): "viewer",
    ("GET", "/v1/update-policies/{name}"): "viewer",
    ("PUT", "/v1/update-policies/{name}"): "deployer",
    ("DELETE", "/v1/update-policies/{name}"): "deployer",
    ("POST", "/v1/fl/jobs"): "deployer",
    ("GET", "/v1/fl/jobs"): "viewer",
    ("GET", "/v1/fl/jobs/{job_id}"): "viewer",
    ("POST", "/v1/fl/jobs/{job_id}/progress"): "deployer",
    ("POST", "/v1/fl/jobs/{job_id}/stop"): "deployer",
    # Flower node keys (issue 14: a device sends its per-job key; the job's fl start registers them)
    ("POST", "/v1/devices/{device_id}/fl/{job_id}/node-key"): "device",
    ("GET", "/v1/fl/jobs/{job_id}/node-keys"): "deployer",
    ("POST", "/v1/fl/jobs/{job_id}/node-keys/registered"): "deployer",
    ("GET", "/v1/accuracy"): "viewer",
    # device power policies per group (issue 15, server/_device_policies.py)
    ("GET", "/v1/device-policies"): "viewer",
    ("PUT", "/v1/device-policies/{name}"): "deployer",
    ("DELETE", "/v1/device-policies/{name}"): "deployer",
    ("GET", "/v1/devices/{device_id}/device-policy"): "device",
}
ROLES = ["viewer", "deployer", "admin"]
DOC_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# Fleet observability (/v1/fleet, /dashboard) is another module's surface with its own access tests
# (tests/server/test_fleetview.py).
FOREIGN_PREFIXES = ("/v1/fleet", "/dashboard")


def test_access_table_covers_every_route(harness):
    seen = set()
    for r in harness.c.app.routes:
        path = getattr(r, "path", None)
        if path in DOC_ROUTES or not hasattr(r, "methods") or path.startswith(FOREIGN_PREFIXES):
            continue
        for m in r.methods:
            seen.add((m, r.path))
    assert seen == set(ACCESS), (
        f"routes without an access rule: {seen - set(ACCESS)}; stale: {set(ACCESS) - seen}"
    )


def _fill(path: str, dev: str) -> str:
    return (
        path.replace("{device_id}", dev)
        .replace("{path:path}", "timestamp.json")
        .replace("{name}", "digits")
        .replace("{version}", "1.0.0")
        .replace("{rollout_id}", "ro-none")
        .replace("{action}", "pause")
        .replace("{token_id}", "op-none")
        .replace("{request_id}", "req-none")
    )


@pytest.mark.parametrize(("method", "path"), sorted(k for k, v in ACCESS.items() if v != "public"))
def test_protected_routes_refuse_missing_wrong_and_weaker_credentials(harness, method, path):
    h = harness
    a, b = h.enroll(), h.enroll()
    rule = ACCESS[(method, path)]
    url = _fill(path, a["device_id"])
    body = {"device_id": a["device_id"]} if path.endswith("heartbeat") else {}
    if path.endswith("telemetry") and method == "POST":
        body = {"device_id": a["device_id"], "batch_id": "batch-0001"}
    if path.endswith("certificate"):
        body = {"csr": "not a CSR"}
    call = lambda headers: h.c.request(method, url, headers=headers, json=body)  # noqa: E731
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer efo_not-a-token"}):
        r = call(headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"] == "unauthorized" and r.json()["hint"]
    if rule.startswith("device"):
        r = call(b["headers"])  # device B on device A's records
        assert r.status_code == 403 and "another device" in r.json()["message"]
    else:
        r = call(a["headers"])  # a device token on an operator endpoint
        assert r.status_code == 401 and "operator token" in r.json()["message"]
    if rule == "device":
        r = call(h.admin)  # an operator token on a device endpoint
        assert r.status_code == 401 and "device token" in r.json()["message"]
    needed = rule.split("|")[-1]
    if needed in ROLES:
        for weaker in ROLES[: ROLES.index(needed)]:
            r = call(h.token(weaker))
            assert r.status_code == 403, (weaker, r.text)
            assert needed in r.json()["message"]
        r = call(h.token(needed))
        assert r.status_code not in (401, 403), r.text


def test_device_reads_its_own_record_only(harness):
    h = harness
    a, b = h.enroll(), h.enroll()
    r = h.c.get(f"/v1/devices/{a['device_id']}", headers=a["headers"])
    assert r.status_code == 200 and r.json()["id"] == a["device_id"]
    r = h.c.get(f"/v1/devices/{b['device_id']}", headers=a["headers"])
    assert r.status_code == 403
    body = {"device_id": b["device_id"], "state": "idle"}
    r = h.c.post(f"/v1/devices/{b['device_id']}/heartbeat", json=body, headers=a["headers"])
    assert r.status_code == 403
    # a heartbeat naming another device in its body is refused even on the device's own URL
    r = h.c.post(f"/v1/devices/{a['device_id']}/heartbeat", json=body, headers=a["headers"])
    assert r.status_code == 422 and "was sent to" in r.json()["message"]
    assert h.c.get(f"/v1/devices/{b['device_id']}", headers=h.admin).json()["state"] == "enrolled"


def test_tokens_are_stored_hashed_and_the_admin_file_is_private(harness):
    h = harness
    dev = h.enroll()
    mode = stat.S_IMODE(h.ctx.config.admin_token_path.stat().st_mode)
    assert mode == 0o600
    db_file = Path(h.ctx.config.database_url.removeprefix("sqlite:///"))
    data = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))  # the file and its WAL
    for secret in (dev["device_token"], h.admin_token):
        assert secret.encode() not in data
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in data


def test_revoked_device_token_is_refused(harness):
    h = harness
    dev = h.enroll()
    h.beat(dev)
    r = h.c.post(f"/v1/devices/{dev['device_id']}/revoke", headers=h.admin)
    assert r.status_code == 200
    r = h.c.post(
        f"/v1/devices/{dev['device_id']}/heartbeat",
        json={"device_id": dev["device_id"]},
        headers=dev["headers"],
    )
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    assert h.c.get(f"/v1/devices/{dev['device_id']}", headers=dev["headers"]).status_code == 401
    assert h.c.get("/v1/devices", params={"status": "revoked"}, headers=h.admin).json()["total"] == 1


def test_revoked_operator_token_is_refused(harness):
    h = harness
    r = h.c.post("/v1/operator-tokens", json={"name": "ci", "role": "deployer"}, headers=h.admin)
    tok, tid = r.json()["token"], r.json()["id"]
    assert h.c.get("/v1/whoami", headers={"Authorization": f"Bearer {tok}"}).json()["role"] == "deployer"
    assert h.c.delete(f"/v1/operator-tokens/{tid}", headers=h.admin).status_code == 200
    r = h.c.get("/v1/whoami", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_unknown_device_gets_a_clear_error(harness):
    h = harness
    dev = h.enroll()
    r = h.c.post(
        "/v1/devices/dev-doesnotexist/heartbeat",
        json={"device_id": "dev-doesnotexist"},
        headers={"Authorization": "Bearer efd_unknown-token-of-nobody"},
    )
    assert r.status_code == 404 and "unknown device" in r.json()["message"] and r.json()["hint"]
    r = h.c.post(
        f"/v1/devices/{dev['device_id']}/heartbeat",
        json={"device_id": dev["device_id"]},
        headers={"Authorization": "Bearer efd_wrong"},
    )
    assert r.status_code == 401 and "invalid device token" in r.json()["message"]


def test_enrollment_token_is_one_time_even_under_concurrency(harness):
    h = harness
    tok = h.enroll_token()
    results: list[int] = []

    def go() -> None:
        r = h.c.post("/v1/enroll", json={"token": tok, "hardware": hardware()})
        results.append(r.status_code)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [401] * 5
    r = h.c.post("/v1/enroll", json={"token": tok, "hardware": hardware()})  # a replay, later
    assert r.status_code == 401 and "already used" in r.json()["message"]
    assert h.c.get("/v1/devices", headers=h.admin).json()["total"] == 1


def test_expired_and_revoked_enrollment_tokens(harness):
    h = harness
    r = h.c.post("/v1/enrollment-tokens", json={"expires_in_s": 60}, headers=h.admin)
    tok = r.json()["token"]
    h.clock.advance(61)
    r = h.c.post("/v1/enroll", json={"token": tok, "hardware": hardware()})
    assert r.status_code == 401 and "expired" in r.json()["message"]
    r = h.c.post("/v1/enrollment-tokens", json={}, headers=h.admin)
    tok, tid = r.json()["token"], r.json()["id"]
    assert h.c.delete(f"/v1/enrollment-tokens/{tid}", headers=h.admin).status_code == 200
    r = h.c.post("/v1/enroll", json={"token": tok, "hardware": hardware()})
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    r = h.c.post("/v1/enroll", json={"token": "efe_never-issued", "hardware": hardware()})
    assert r.status_code == 401 and "unknown enrollment token" in r.json()["message"]
    r = h.c.post("/v1/enrollment-tokens", json={"expires_in_s": 10**9}, headers=h.admin)
    assert r.status_code == 400
    assert h.c.get("/v1/devices", headers=h.admin).json()["total"] == 0


def test_enrollment_token_scopes_tags(harness):
    h = harness
    tok = h.enroll_token(region="eu-west")
    r = h.c.post("/v1/enroll", json={"token": tok, "hardware": hardware(region="us-east")})
    assert r.status_code == 403 and "scoped to region=eu-west" in r.json()["message"]
    r = h.c.post("/v1/enroll", json={"token": tok, "hardware": hardware(site="lab")})
    assert r.status_code == 200  # the failed attempt did not use the token up
    d = r.json()
    assert h.c.get(f"/v1/devices/{d['device_id']}", headers=h.admin).json()["tags"] == {
        "region": "eu-west",
        "site": "lab",
    }
    r = h.c.post("/v1/enroll", json={"token": h.enroll_token(), "hardware": hardware(**{"region": "a b"})})
    assert r.status_code == 422


def test_operator_roles_can_be_created_and_listed_by_admins_only(harness):
    h = harness
    viewer = h.token("viewer")
    r = h.c.post("/v1/operator-tokens", json={"name": "x", "role": "superuser"}, headers=h.admin)
    assert r.status_code == 422
    listed = h.c.get("/v1/operator-tokens", headers=h.admin).json()
    assert {t["role"] for t in listed} == {"admin", "viewer"} and all("token" not in t for t in listed)
    assert h.c.get("/v1/whoami", headers=viewer).json()["role"] == "viewer"
