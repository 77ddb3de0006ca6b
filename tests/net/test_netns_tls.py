"""TLS across a real interface: a server in its own network namespace, a client on this host."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from nettools import netns_host

from edgefleet.tls import CertificateAuthority, client_context

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, digits_mlp, digits_split):
    from edgefleet.bundle import create_bundle

    out = tmp_path_factory.mktemp("b") / "digits.tar"
    return create_bundle(
        digits_mlp,
        out,
        name="digits",
        version="1.0.0",
        variant="cpu",
        inputs_raw=digits_split.x_test[:8],
        preprocess=[{"op": "scale", "factor": 1 / 16}],
    )


def _wait_up(client: httpx.Client, url: str, proc: subprocess.Popen, deadline_s: float = 120.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if client.get(url).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not up within {deadline_s}s")


def test_serve_over_tls_across_a_veth_and_a_real_partition(tmp_path, bundle):
    with netns_host() as host:
        ca = CertificateAuthority.init(tmp_path / "ca")
        ca.issue_server([host.addr]).write(tmp_path / "s.crt", tmp_path / "s.key")
        cmd = [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "serve",
            str(bundle),
            "--host",
            host.addr,
            "--port",
            "8443",
        ]

        # clear text on a routable address is refused, saying why
        r = subprocess.run(host.prefix + cmd, capture_output=True, text=True, timeout=120, env=os.environ)
        assert r.returncode == 1 and "without TLS" in r.stderr and "Traceback" not in r.stderr

        proc = subprocess.Popen(
            host.prefix + cmd + ["--tls-cert", str(tmp_path / "s.crt"), "--tls-key", str(tmp_path / "s.key")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            url = f"https://{host.addr}:8443/healthz"
            with httpx.Client(verify=client_context(tmp_path / "ca" / "ca.crt"), timeout=2) as c:
                _wait_up(c, url, proc)
                host.partition()  # the link is down: nothing gets through
                with pytest.raises(httpx.TransportError):
                    c.get(url)
                host.heal()
                _wait_up(c, url, proc, deadline_s=60)
            # another CA's client refuses the server's certificate across the wire as well
            other = CertificateAuthority.init(tmp_path / "other")
            with (
                httpx.Client(verify=client_context(tmp_path / "other" / "ca.crt"), timeout=5) as c,
                pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
            ):
                c.get(url)
            assert other.cert_pem
        finally:
            proc.terminate()
            proc.wait(timeout=30)
