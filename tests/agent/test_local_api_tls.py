"""The agent's local inference API: HTTPS with a certificate, and no clear text off loopback."""

from __future__ import annotations

import httpx
import pytest

from edgefleet.errors import ConfigError
from edgefleet.tls import CertificateAuthority, client_context


def test_local_api_over_tls_and_clear_text_off_loopback_refused(world, tmp_path):
    ca = CertificateAuthority.init(tmp_path / "ca")
    ca.issue_server(["127.0.0.1"]).write(tmp_path / "api.crt", tmp_path / "api.key")
    a = world.agent(api_port=0, api_tls_cert=str(tmp_path / "api.crt"), api_tls_key=str(tmp_path / "api.key"))
    world.install(a, "1.0.0")
    url = f"https://127.0.0.1:{a.api_port}/v1/predict"
    with httpx.Client(verify=client_context(tmp_path / "ca" / "ca.crt"), timeout=10) as c:
        r = c.post(url, json={"inputs": [[0.0] * 64]})
    assert r.status_code == 200 and r.json()["model"]["version"] == "1.0.0", r.text
    with httpx.Client(timeout=5) as c, pytest.raises(httpx.HTTPError):
        c.post(url.replace("https:", "http:"), json={"inputs": [[0.0] * 64]})

    # a routable address in clear text: the API is refused, saying why (the model keeps serving in-process)
    with pytest.raises(ConfigError, match="without TLS"):
        a.host.serve("0.0.0.0", 0)
