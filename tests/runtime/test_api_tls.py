"""The private CA and TLS on the runtime's API: real certificates, real handshakes on loopback."""

from __future__ import annotations

import ssl
import stat

import httpx
import pytest
from fastapi import FastAPI, Request
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import ConfigError, InputError
from edgefleet.runtime import ApiConfig, ApiServer, Runtime
from edgefleet.tls import (
    CertificateAuthority,
    cert_common_name,
    check_listen,
    client_context,
    is_loopback,
    new_key_and_csr,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.init(d / "ca")
    ca.issue_server(["127.0.0.1", "localhost"]).write(d / "server.crt", d / "server.key")
    key, csr = new_key_and_csr("ignored-name")
    ca.sign_device_csr(csr, "dev-1").write(d / "dev.crt")
    (d / "dev.key").write_bytes(key)
    other = CertificateAuthority.init(d / "other")  # a man in the middle's CA
    other.issue_server(["127.0.0.1"]).write(d / "mitm.crt", d / "mitm.key")
    okey, ocsr = new_key_and_csr("dev-1")
    other.sign_device_csr(ocsr, "dev-1").write(d / "forged.crt")
    (d / "forged.key").write_bytes(okey)
    return d


def test_ca_files_and_permissions(pki):
    assert stat.S_IMODE((pki / "ca").stat().st_mode) == 0o700
    assert stat.S_IMODE((pki / "ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "server.key").stat().st_mode) == 0o600
    # the CA names the device, whatever the CSR asked for
    assert cert_common_name((pki / "dev.crt").read_bytes()) == "dev-1"
    with pytest.raises(ConfigError, match="already holds a CA"):
        CertificateAuthority.init(pki / "ca")


def test_encrypted_ca_key_needs_its_passphrase(tmp_path):
    CertificateAuthority.init(tmp_path / "ca", passphrase=b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / "ca" / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="passphrase"):
        CertificateAuthority.load(tmp_path / "ca")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        CertificateAuthority.load(tmp_path / "ca", passphrase=b"wrong")
    ca = CertificateAuthority.load(tmp_path / "ca", passphrase=b"correct horse")
    assert ca.issue_server(["edge.example"]).key_pem


@pytest.mark.parametrize(
    "csr, why",
    [(b"not a csr", "not a PEM"), (b"x" * 20000, "more than")],
)
def test_bad_csrs_are_refused(pki, csr, why):
    ca = CertificateAuthority.load(pki / "ca")
    with pytest.raises(InputError, match=why):
        ca.sign_device_csr(csr, "dev-2")


def test_listen_policy():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("edge.example")
    check_listen("127.0.0.1", tls=False, insecure_http=False)
    check_listen("0.0.0.0", tls=True, insecure_http=False)
    check_listen("0.0.0.0", tls=False, insecure_http=True)
    with pytest.raises(ConfigError, match="without TLS") as e:
        check_listen("0.0.0.0", tls=False, insecure_http=False)
    assert "--insecure-http" in e.value.hint and "certs init" in e.value.hint


def test_api_refuses_a_clear_text_bind_off_loopback(digits_bundle):
    rt = Runtime.from_bundle(digits_bundle)
    try:
        with pytest.raises(ConfigError, match="without TLS"):
            ApiServer(rt, ApiConfig(host="0.0.0.0", port=0))
    finally:
        rt.close()


def test_api_over_tls_and_a_mitm_is_refused(digits_bundle, pki):
    rt = Runtime.from_bundle(digits_bundle)
    cfg = ApiConfig(port=0, tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"))
    with ApiServer(rt, cfg) as srv:
        assert srv.url.startswith("https://")
        with httpx.Client(base_url=srv.url, verify=client_context(pki / "ca" / "ca.crt")) as c:
            assert c.get("/healthz").status_code == 200
        # pinned to another CA (what the agent does against a man in the middle): the handshake fails
        with (
            httpx.Client(base_url=srv.url, verify=client_context(pki / "other" / "ca.crt")) as c,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            c.get("/healthz")
        # clear text to the TLS port is not answered as HTTP
        with (
            httpx.Client(base_url=srv.url.replace("https", "http"), timeout=5) as c,
            pytest.raises(httpx.HTTPError),
        ):
            c.get("/healthz")
    rt.close()


def test_api_with_mutual_tls(digits_bundle, pki):
    rt = Runtime.from_bundle(digits_bundle)
    cfg = ApiConfig(
        port=0,
        tls_cert=str(pki / "server.crt"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca" / "ca.crt"),
    )
    ca = pki / "ca" / "ca.crt"
    with ApiServer(rt, cfg) as srv:
        with httpx.Client(
            base_url=srv.url, verify=client_context(ca, cert=pki / "dev.crt", key=pki / "dev.key")
        ) as c:
            assert c.get("/healthz").status_code == 200
        for cert, key in [(None, None), (pki / "forged.crt", pki / "forged.key")]:
            with (
                httpx.Client(base_url=srv.url, verify=client_context(ca, cert=cert, key=key)) as c,
                pytest.raises((httpx.HTTPError, ssl.SSLError)),
            ):
                c.get("/healthz")
    rt.close()


def test_cli_certs_and_serve_refusal(tmp_path, digits_bundle):
    runner = CliRunner()
    r = runner.invoke(app, ["certs", "init", str(tmp_path / "ca"), "--host", "127.0.0.1", "--json"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ca" / "server.crt").is_file()
    r = runner.invoke(app, ["certs", "issue", str(tmp_path / "ca"), "-o", str(tmp_path / "replica2")])
    assert r.exit_code == 0, r.output
    assert cert_common_name((tmp_path / "replica2.crt").read_bytes()) == "127.0.0.1"
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("edgefleet ")


def test_cli_serve_off_loopback_without_tls_says_why(digits_bundle):
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "serve",
            str(digits_bundle),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert "without TLS" in r.stderr and "Traceback" not in r.stderr + r.stdout


def test_the_app_sees_the_verified_client_certificate(pki):
    """uvicorn with peer_cert_protocol hands the client certificate to the ASGI app (for device identity)."""
    import socket
    import threading
    import time

    import uvicorn
    from cryptography import x509

    from edgefleet.tls import peer_cert_der, peer_cert_protocol

    app = FastAPI()

    @app.get("/whoami")
    async def whoami(request: Request) -> dict:
        der = peer_cert_der(request.scope)
        if der is None:
            return {"cn": None}
        cert = x509.load_der_x509_certificate(der)
        return {"cn": cert.subject.rfc4514_string()}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            http=peer_cert_protocol(),
            ssl_certfile=str(pki / "server.crt"),
            ssl_keyfile=str(pki / "server.key"),
            ssl_ca_certs=str(pki / "ca" / "ca.crt"),
            ssl_cert_reqs=ssl.CERT_OPTIONAL,
        )
    )
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and t.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        ca = pki / "ca" / "ca.crt"
        url = f"https://127.0.0.1:{port}/whoami"
        with httpx.Client(verify=client_context(ca, cert=pki / "dev.crt", key=pki / "dev.key")) as c:
            assert c.get(url).json() == {"cn": "CN=dev-1"}
        with httpx.Client(verify=client_context(ca)) as c:  # optional: no certificate is no identity
            assert c.get(url).json() == {"cn": None}
    finally:
        server.should_exit = True
        t.join(10)
