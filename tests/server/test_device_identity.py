"""Device identity and signed director answers, with a real control plane and a real agent.

TLS on loopback: the agent enrolls with a CSR and the pinned CA, then authenticates with its own
certificate (mutual TLS); a revoked device is refused on its next request; a renewal swaps key and
certificate. Director answers: a replayed older answer, an expired one, one signed by another key, and a
replayed command are all refused by the agent.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import httpx
import pytest

from edgefleet.agent import Agent, AgentConfig, enroll
from edgefleet.client import Client
from edgefleet.errors import ConfigError
from edgefleet.protocol._directive import Directive, new_director_key, sign_directive
from edgefleet.server import ServerConfig, start_server
from edgefleet.tls import CertificateAuthority, cert_common_name, client_context, new_key_and_csr

pytestmark = pytest.mark.slow


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def tls_site(tmp_path, published):
    ca = CertificateAuthority.init(tmp_path / "ca")
    ca.issue_server(["127.0.0.1", "localhost"]).write(tmp_path / "server.crt", tmp_path / "server.key")
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        tls_cert=tmp_path / "server.crt",
        tls_key=tmp_path / "server.key",
        ca_dir=tmp_path / "ca",
        engine_tick_s=0.1,
        poll_interval_s=0.5,
    )
    with start_server(cfg) as srv:
        assert srv.url.startswith("https://")
        with Client(srv.url, token=srv.admin_token, ca_file=tmp_path / "ca" / "ca.crt") as api:
            yield srv, api, tmp_path / "ca" / "ca.crt"


def _enroll(api: Client, url: str, published: Path, state: Path, **kw) -> tuple[AgentConfig, str]:
    cfg = AgentConfig(state_dir=state, request_timeout_s=10)
    tok = api.create_enrollment_token()["token"]
    creds = enroll(
        cfg, token=tok, root_json=published / "repo" / "metadata" / "1.root.json", server_url=url, **kw
    )
    return cfg, creds.device_id


def _token(state: Path) -> str:
    return json.loads((state / "credentials.json").read_text())["device_token"]


def test_agent_enrolls_with_a_csr_and_heartbeats_over_mutual_tls(tls_site, published, tmp_path):
    srv, api, ca_crt = tls_site
    state = tmp_path / "dev-a"
    # an https server without a pinned CA is refused before anything is sent
    with pytest.raises(ConfigError, match="no CA is pinned") as e:
        _enroll(api, srv.url, published, tmp_path / "nope")
    assert "--ca" in e.value.hint
    cfg, dev = _enroll(api, srv.url, published, state, ca=ca_crt)
    assert _mode(state / "device.pem") == 0o600 and b"PRIVATE KEY" in (state / "device.pem").read_bytes()
    assert cert_common_name((state / "device.pem").read_bytes()) == dev
    assert (state / "ca.crt").read_bytes() == ca_crt.read_bytes()
    assert (state / "director.pub").is_file()
    # enrollment ends by reporting once with the new certificate: the device confirmed it holds it
    assert api.device(dev)["status"] == "online"

    a = Agent(cfg)
    try:
        resp = a.heartbeat()
        assert resp is not None and a.journal.state.director_seq == 2  # #1 answered enrollment's report
    finally:
        a.close()
    assert api.device(dev)["status"] == "online"

    beat = {"device_id": dev, "state": "idle"}
    url = f"{srv.url}/v1/devices/{dev}/heartbeat"
    pem = state / "device.pem"
    # the certificate alone authenticates (no token)
    with httpx.Client(verify=client_context(ca_crt, cert=pem, key=pem)) as c:
        r = c.post(url, json=beat)
        assert r.status_code == 200, r.text
        assert r.json()["signed"]["payload"]
        # a device's certificate does not open another device's records
        other = f"{srv.url}/v1/devices/dev-0000000000000000/heartbeat"
        r = c.post(other, json={**beat, "device_id": "dev-0000000000000000"})
        assert r.status_code == 403 and "belongs to" in r.json()["message"]
    # no certificate, no token: refused
    with httpx.Client(verify=client_context(ca_crt)) as c:
        assert c.post(url, json=beat).status_code == 401
    # a certificate from another CA does not even complete the handshake
    rogue = CertificateAuthority.init(tmp_path / "rogue")
    key, csr = new_key_and_csr(dev)
    (tmp_path / "rogue.pem").write_bytes(key + rogue.sign_device_csr(csr, dev).cert_pem)
    rp = tmp_path / "rogue.pem"
    with httpx.Client(verify=client_context(ca_crt, cert=rp, key=rp)) as c, pytest.raises(httpx.HTTPError):
        c.post(url, json=beat)


def test_revoked_device_is_refused_on_its_next_request_by_certificate_and_by_token(
    tls_site, published, tmp_path
):
    srv, api, ca_crt = tls_site
    state = tmp_path / "dev-r"
    cfg, dev = _enroll(api, srv.url, published, state, ca=ca_crt)
    pem = state / "device.pem"
    beat = {"device_id": dev, "state": "idle"}
    url = f"{srv.url}/v1/devices/{dev}/heartbeat"
    with httpx.Client(verify=client_context(ca_crt, cert=pem, key=pem)) as c:
        assert c.post(url, json=beat).status_code == 200
        api.revoke_device(dev)
        r = c.post(url, json=beat)  # same connection, very next request
        assert r.status_code == 401 and r.json()["error"] == "device_revoked"
        assert "enroll" in r.json()["hint"]
    with httpx.Client(verify=client_context(ca_crt)) as c:
        r = c.post(url, json=beat, headers={"Authorization": f"Bearer {_token(state)}"})
        assert r.status_code == 401 and r.json()["error"] == "device_revoked"
    a = Agent(cfg)
    try:
        assert a.heartbeat() is None  # the agent keeps serving; the refusal is its last error
        assert "revoked" in (a.journal.state.last_error or "")
    finally:
        a.close()


def test_certificate_renewal_swaps_key_and_certificate(tls_site, published, tmp_path):
    from datetime import UTC, datetime, timedelta

    srv, api, ca_crt = tls_site
    state = tmp_path / "dev-n"
    cfg, dev = _enroll(api, srv.url, published, state, ca=ca_crt)
    before = (state / "device.pem").read_bytes()
    a = Agent(cfg)
    try:
        assert not a.identity.renewal_due()
        assert a.identity.renewal_due(datetime.now(UTC) + timedelta(days=21))  # under a third of 30 days left
        a.identity.renew(a.director.post, dev)
        after = (state / "device.pem").read_bytes()
        assert after != before and _mode(state / "device.pem") == 0o600
        assert after.split(b"-----END")[0] != before.split(b"-----END")[0]  # a new key too
        assert cert_common_name(after) == dev
        assert a.heartbeat() is not None  # new connections present the new certificate
    finally:
        a.close()
    # without a certificate, a wrong token is refused
    with httpx.Client(verify=client_context(ca_crt)) as c:
        r = c.post(
            f"{srv.url}/v1/devices/{dev}/certificate",
            json={"csr": new_key_and_csr(dev)[1].decode()},
            headers={"Authorization": "Bearer efd_nope"},
        )
        assert r.status_code == 401


# --- signed, fresh director answers ------------------------------------------------------------


class Mitm(httpx.BaseTransport):
    """Sits on the agent's path to the director: records heartbeat answers, can replace the next one."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.answers: list[bytes] = []
        self.replace: bytes | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        if not request.url.path.endswith("/heartbeat"):
            return resp
        body = resp.read()
        self.answers.append(body)
        if self.replace is not None:
            body, self.replace = self.replace, None
        return httpx.Response(resp.status_code, headers={"content-type": "application/json"}, content=body)


@pytest.fixture
def director_site(tmp_path, published):
    offset = [0.0]
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        engine_tick_s=0.1,
        poll_interval_s=0.5,
    )
    with (
        start_server(cfg, clock=lambda: time.time() + offset[0]) as srv,
        Client(srv.url, token=srv.admin_token) as api,
    ):
        yield srv, api, offset


def _agent(api, srv, published, tmp_path):
    cfg, dev = _enroll(api, srv.url, published, tmp_path / "dev")
    mitm = Mitm()
    a = Agent(cfg, director_transport=mitm)
    assert a.heartbeat() is not None  # its first report: no longer pending, rollouts may admit it
    return a, mitm, dev


def _assigned(a: Agent, version: str, deadline_s: float = 30.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        resp = a.heartbeat()
        if resp is not None and resp.assignment is not None and resp.assignment.version == version:
            return resp
        time.sleep(0.1)
    raise AssertionError(f"never assigned {version}")


def _roll(api: Client, version: str) -> str:
    api.register_release("digits", version)
    return api.create_rollout("digits", version, selector="*", waves=[100], soak_s=3600)["id"]


def test_replayed_older_assignment_does_not_roll_the_device_back(director_site, published, tmp_path):
    srv, api, _ = director_site
    a, mitm, dev = _agent(api, srv, published, tmp_path)
    try:
        r1 = _roll(api, "1.0.0")
        _assigned(a, "1.0.0")
        old = mitm.answers[-1]
        api.abort_rollout(r1)
        _roll(api, "1.1.0")
        _assigned(a, "1.1.0")
        seq = a.journal.state.director_seq
        mitm.replace = old  # the attacker answers with the older, validly signed assignment
        resp = a.heartbeat()
        assert resp is not None and resp.assignment is None  # nothing to act on
        assert a.journal.state.director_seq == seq and a.journal.state.directives_refused == 1
        assert a.journal.state.history[-1]["event"] == "directive_refused"
        assert "older than" in a.journal.state.history[-1]["reason"]
        assert _assigned(a, "1.1.0")  # the real answers still work
    finally:
        a.close()


def test_expired_assignment_is_refused(director_site, published, tmp_path):
    srv, api, offset = director_site
    a, mitm, dev = _agent(api, srv, published, tmp_path)
    try:
        _roll(api, "1.0.0")
        _assigned(a, "1.0.0")
        offset[0] = -3600.0  # a withheld answer, delivered an hour late
        resp = a.heartbeat()
        offset[0] = 0.0
        assert resp is not None and resp.assignment is None
        assert "expired" in a.journal.state.history[-1]["reason"]
        assert a.journal.state.directives_refused == 1
    finally:
        a.close()


def test_assignment_signed_by_another_key_is_refused(director_site, published, tmp_path):
    srv, api, _ = director_site
    a, mitm, dev = _agent(api, srv, published, tmp_path)
    try:
        _roll(api, "1.0.0")
        real = json.loads(_assigned(a, "1.0.0") and mitm.answers[-1])
        d = Directive.model_validate_json(real["signed"]["payload"])
        forged = d.model_copy(update={"seq": d.seq + 100})
        priv, _ = new_director_key()
        real["signed"] = sign_directive(priv, forged).model_dump(mode="json")
        mitm.replace = json.dumps(real).encode()
        resp = a.heartbeat()
        assert resp is not None and resp.assignment is None
        assert "another key" in a.journal.state.history[-1]["reason"]
        # an unsigned answer (the signature stripped) is refused too
        real["signed"] = None
        mitm.replace = json.dumps(real).encode()
        assert a.heartbeat().assignment is None
        assert a.journal.state.directives_refused == 2
    finally:
        a.close()


def test_replayed_command_is_not_run_again(director_site, published, tmp_path):
    from sqlalchemy import text

    srv, api, _ = director_site
    a, mitm, dev = _agent(api, srv, published, tmp_path)
    try:
        with srv.app.state.ctx.db.write() as s:
            s.execute(
                text("UPDATE devices SET command = 'rollback', command_version = '=9.9.9' WHERE id = :id"),
                {"id": dev},
            )
        resp = a.heartbeat()
        assert resp is not None and resp.commands == ["rollback"]
        ran = a.journal.state.director_commands_seq
        assert ran == a.journal.state.director_seq
        mitm.replace = mitm.answers[-1]  # the same signed answer again
        resp = a.heartbeat()
        assert resp is not None and resp.commands == []
        assert a.journal.state.director_commands_seq == ran
    finally:
        a.close()


# --- enrollment that cannot leave a ghost; files at rest; offline docs ---------------------------


def test_a_pending_device_is_never_online_never_admitted_and_does_not_stall_a_rollout(harness):
    from servertools import GOOD, active_of

    h = harness
    live = [h.enroll() for _ in range(2)]
    ghost = h.enroll(first_beat=False)  # enrolled, never reported (its agent died after enrolling)
    listed = h.c.get("/v1/devices", params={"status": "pending"}, headers=h.admin).json()
    assert [d["id"] for d in listed["devices"]] == [ghost["device_id"]]
    online = h.c.get("/v1/devices", params={"status": "online"}, headers=h.admin).json()
    assert ghost["device_id"] not in {d["id"] for d in online["devices"]} and online["total"] == 2
    h.register("1.0.0")
    r = h.rollout("1.0.0", waves=[100], soak_s=0, gates={"min_devices": 2, "min_requests": 0})
    assert r["members"] == {"admitted": 2}
    for d in live:
        a = h.beat(d)["assignment"]
        h.beat(d, active=active_of(a), health=GOOD)
    h.tick(1)
    assert h.show(r["id"])["state"] == "completed"
    rec = h.c.get(f"/v1/devices/{ghost['device_id']}", headers=h.admin).json()
    assert rec["status"] == "pending" and rec["assigned"] is None
    # its first heartbeat makes it a device like any other
    h.beat(ghost)
    assert h.c.get(f"/v1/devices/{ghost['device_id']}", headers=h.admin).json()["status"] == "online"


def test_the_data_folder_is_0700_and_the_database_0600(tmp_path):
    from edgefleet.server import create_app

    cfg = ServerConfig(
        data_dir=tmp_path / "fresh" / "server", keys_dir=tmp_path / "nokeys", engine_enabled=False
    )
    create_app(cfg)
    assert _mode(cfg.data_dir) == 0o700
    assert _mode(cfg.data_dir / "edgefleet.sqlite") == 0o600
    assert _mode(cfg.director_key_path) == 0o600


def test_api_docs_are_served_from_the_package(harness):
    for path in ("/docs", "/redoc"):
        r = harness.c.get(path)
        assert r.status_code == 200
        assert "cdn.jsdelivr.net" not in r.text and "unpkg.com" not in r.text
        asset = next(u for u in r.text.split('"') if u.endswith(".js"))
        assert harness.c.get(asset).status_code == 200, asset


def test_server_run_refuses_clear_text_off_loopback(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "server",
            "run",
            "--data",
            str(tmp_path / "s"),
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "without TLS" in r.stderr and "--insecure-http" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "s").exists()


def test_without_a_ca_given_the_server_makes_its_device_ca_in_its_data_folder(tmp_path, published):
    ca = CertificateAuthority.init(tmp_path / "ca")  # signs only the server's certificate here
    ca.issue_server(["127.0.0.1"]).write(tmp_path / "server.crt", tmp_path / "server.key")
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        tls_cert=tmp_path / "server.crt",
        tls_key=tmp_path / "server.key",
        device_auth="mtls",
        engine_enabled=False,
    )
    with (
        start_server(cfg) as srv,
        Client(srv.url, token=srv.admin_token, ca_file=tmp_path / "ca" / "ca.crt") as api,
    ):
        device_ca = tmp_path / "server" / "ca"
        assert (device_ca / "ca.crt").is_file() and _mode(device_ca / "ca.key") == 0o600
        state = tmp_path / "dev"
        cfg_a, dev = _enroll(api, srv.url, published, state, ca=tmp_path / "ca" / "ca.crt")
        pem = (state / "device.pem").read_bytes()
        from cryptography import x509

        assert x509.load_pem_x509_certificate(pem).issuer == CertificateAuthority.load(device_ca).cert.subject
        a = Agent(cfg_a)
        try:
            assert a.heartbeat() is not None  # mtls only: the certificate from the server's own CA works
        finally:
            a.close()
        assert api.device(dev)["status"] == "online"


def test_agent_enroll_refuses_an_https_server_without_a_pinned_ca(tmp_path, published):
    import subprocess
    import sys

    cmd = [
        sys.executable, "-m", "edgefleet.cli", "agent", "enroll", "--server", "https://127.0.0.1:9",
        "--token", "enroll-token-0123456789", "--root", str(published / "repo" / "metadata" / "1.root.json"),
        "--state", str(tmp_path / "state"),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no CA is pinned" in r.stderr and "--ca" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "state").exists()
    # --system-ca is the explicit choice of the system store: it gets as far as the network
    r = subprocess.run([*cmd, "--system-ca"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no CA is pinned" not in r.stderr and "Traceback" not in r.stderr


def test_a_running_agent_renews_its_certificate_before_it_expires(tmp_path, published):
    ca = CertificateAuthority.init(tmp_path / "ca")
    ca.issue_server(["127.0.0.1"]).write(tmp_path / "server.crt", tmp_path / "server.key")
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        tls_cert=tmp_path / "server.crt",
        tls_key=tmp_path / "server.key",
        ca_dir=tmp_path / "ca",
        device_cert_days=0.001,  # 86 s (+ 5 min backdated): under a third of its lifetime is left at once
        device_auth="mtls",
        engine_enabled=False,
    )
    with (
        start_server(cfg) as srv,
        Client(srv.url, token=srv.admin_token, ca_file=tmp_path / "ca" / "ca.crt") as api,
    ):
        state = tmp_path / "dev"
        cfg_a, dev = _enroll(api, srv.url, published, state, ca=tmp_path / "ca" / "ca.crt")
        first = (state / "device.pem").read_bytes()
        a = Agent(cfg_a)
        try:
            assert a.identity.renewal_due()
            assert a.heartbeat() is not None
            assert (state / "device.pem").read_bytes() != first  # renewed on the way, by certificate
            assert a.heartbeat() is not None
        finally:
            a.close()
        assert api.device(dev)["status"] == "online"


def test_an_expired_device_certificate_is_refused(tls_site, tmp_path):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    srv, api, ca_crt = tls_site
    ca = CertificateAuthority.load(ca_crt.parent)
    dev = "dev-0000000000000001"
    now = dt.datetime.now(dt.UTC)

    def cert_file(name: str, not_before: dt.datetime, not_after: dt.datetime) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dev)]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .sign(ca.key, hashes.SHA256())
        )
        p = tmp_path / name
        p.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        return p

    url = f"{srv.url}/v1/devices/{dev}/heartbeat"
    beat = {"device_id": dev, "state": "idle"}
    valid = cert_file("valid.pem", now - dt.timedelta(days=1), now + dt.timedelta(days=1))
    with httpx.Client(verify=client_context(ca_crt, cert=valid, key=valid)) as c:
        assert c.post(url, json=beat).status_code == 404  # accepted as dev-...01, which does not exist
    expired = cert_file("expired.pem", now - dt.timedelta(days=31), now - dt.timedelta(days=1))
    # the TLS layer drops it: no request is served
    with (
        httpx.Client(verify=client_context(ca_crt, cert=expired, key=expired)) as c,
        pytest.raises(httpx.HTTPError),
    ):
        c.post(url, json=beat)
