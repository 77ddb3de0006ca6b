"""Issue 14, Flower's transport security end to end: a control plane on HTTPS with device certificates, real
agents, and `edgefleet fl start --server https://... --tls-ca-dir` in its own process. The SuperLink serves TLS
with a certificate from the control plane's CA and authenticates SuperNodes; each selected agent makes a
per-job node key, sends its public half over its mutual-TLS channel, and starts its SuperNode (trusting the CA
it pinned at enrollment) once `fl start` registered the key with the SuperLink."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from edgefleet.agent import Agent, AgentConfig, enroll
from edgefleet.client import Client
from edgefleet.federated._data import digits_federation
from edgefleet.server import ServerConfig, start_server
from edgefleet.tls import CertificateAuthority

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _events(agent: Agent, kind: str) -> list[dict]:
    return [e for e in list(agent.journal.state.history) if e["event"] == kind]


def test_agents_join_a_tls_job_with_registered_node_keys(tmp_path, published):
    folders, base, (x_eval, y_eval), _ = digits_federation(2, tmp_path / "data", seed=2)
    np.savez(tmp_path / "base.npz", W=base.W, b=base.b)
    np.savez(tmp_path / "eval.npz", x=x_eval, y=y_eval)
    ca = CertificateAuthority.init(tmp_path / "ca")
    ca.issue_server(["127.0.0.1", "localhost"]).write(tmp_path / "server.crt", tmp_path / "server.key")
    ca_crt = tmp_path / "ca" / "ca.crt"
    cfg = ServerConfig(
        data_dir=tmp_path / "server",
        repo_dir=published / "repo",
        keys_dir=tmp_path / "nokeys",
        tls_cert=tmp_path / "server.crt",
        tls_key=tmp_path / "server.key",
        ca_dir=tmp_path / "ca",
        device_auth="mtls",
        engine_tick_s=0.1,
        poll_interval_s=0.5,
    )
    fl = [sys.executable, "-m", "edgefleet.cli", "fl", "start"]
    with start_server(cfg) as srv, Client(srv.url, token=srv.admin_token, ca_file=ca_crt) as api:
        assert srv.url.startswith("https://")
        agents: list[Agent] = []
        empty_sys = tmp_path / "sys"  # a device tree with nothing in it: the busy test machine does not block
        empty_sys.mkdir()
        for i, region in enumerate(("eu", "eu")):
            conf = AgentConfig(
                state_dir=tmp_path / f"agent{i}",
                request_timeout_s=10,
                device_state=f"sysfs:{empty_sys}",
                fl_data_dir=folders[i],
            )
            token = api.create_enrollment_token(tags={"region": region})["token"]
            enroll(
                conf, token=token, root_json=published / "repo" / "metadata" / "1.root.json",
                server_url=srv.url, ca=ca_crt,
            )  # fmt: skip
            agents.append(Agent(conf))
        threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
        for t in threads:
            t.start()
        job_dir = tmp_path / "job"
        try:
            start = subprocess.run(
                fl + [str(job_dir), "--job-id", "tls-eu", "--base-head", str(tmp_path / "base.npz"),
                      "--eval-data", str(tmp_path / "eval.npz"), "--rounds", "1", "--clients-per-round", "2",
                      "--min-clients", "2", "--deadline", "2m", "--timeout", "4m", "--json",
                      "--server", srv.url, "--token", srv.admin_token, "--ca", str(ca_crt),
                      "--tls-ca-dir", str(tmp_path / "ca"), "--selector", "region=eu"],
                capture_output=True, text=True, timeout=280,
            )  # fmt: skip
            assert start.returncode == 0, start.stderr[-3000:]
            result = json.loads(start.stdout)
            (r,) = [e for e in result["events"] if e["event"] == "round"]
            assert r["answered"] == 2 and r["aggregated"]

            for a in agents:
                (joined,) = _events(a, "fl_joined")
                assert joined["tls"] is True and joined["job"] == "tls-eu"
                assert _events(a, "fl_key_sent")  # it waited for its key to be registered before starting
                key = a.state_dir / "federated" / "tls-eu" / "node.key"
                assert key.stat().st_mode & 0o077 == 0
            keys = api.fl_node_keys("tls-eu")
            assert sorted(k["device_id"] for k in keys) == sorted(a.creds.device_id for a in agents)
            assert all(k["registered"] and k["public_key"].startswith("ecdsa-sha2-nistp256 ") for k in keys)
            log = (job_dir / "superlink.log").read_text()
            assert "https://" in log and log.count("[Fleet.ActivateNode] Activated") >= 2
            # the SuperLink's certificate came from the control plane's CA, for loopback
            from cryptography import x509

            cert = x509.load_pem_x509_certificate((job_dir / "tls" / "superlink.crt").read_bytes())
            assert cert.issuer == ca.cert.subject
        finally:
            for a in agents:
                a.stop_event.set()
            for t in threads:
                t.join(60)
