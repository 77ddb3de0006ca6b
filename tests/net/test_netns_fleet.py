"""A control plane on another host over mutual TLS: `edgefleet server run` in a network namespace, two real
agents (`edgefleet agent enroll` + `agent run` processes) on this side, a revocation, a man in the middle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from nettools import netns_host

from edgefleet.client import Client
from edgefleet.tls import CertificateAuthority, client_context

pytestmark = pytest.mark.slow

EF = [sys.executable, "-m", "edgefleet.cli"]


def _repo(base: Path) -> Path:
    from edgefleet.registry import Repository, init_keys

    repo = Repository.init(base / "repo", init_keys(base / "keys", root_keys=1, root_threshold=1))
    return Path(repo.root_json_path).parent


def _wait(pred, what: str, deadline_s: float = 120.0, procs: list[subprocess.Popen] = ()) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for p in procs:
            assert p.poll() is None, f"{p.args} exited with {p.returncode} while waiting for {what}"
        try:
            if pred():
                return
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"not within {deadline_s}s: {what}")


def _server(host, tmp: Path, name: str, port: int, cert: Path, key: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        *EF, "server", "run", "--data", str(tmp / name), "--repo", str(tmp / "repo"),
        "--keys", str(tmp / "nokeys"), "--host", host.addr, "--port", str(port),
        "--tls-cert", str(cert), "--tls-key", str(key), "--poll-interval", "1", *extra,
    ]  # fmt: skip
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(host.prefix + cmd, stdout=log, stderr=subprocess.STDOUT)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def test_two_agents_over_mutual_tls_across_a_veth_a_revocation_and_a_man_in_the_middle(tmp_path):
    with netns_host() as host:
        r = subprocess.run(
            [*EF, "certs", "init", str(tmp_path / "ca"), "--host", host.addr, "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        ca_crt = tmp_path / "ca" / "ca.crt"
        _repo(tmp_path)
        url = f"https://{host.addr}:8443"
        procs: list[subprocess.Popen] = []
        try:
            # device auth by certificate only: a device online proves its mutual TLS
            srv = _server(
                host, tmp_path, "server", 8443, tmp_path / "ca" / "server.crt", tmp_path / "ca" / "server.key",
                "--ca", str(tmp_path / "ca"), "--device-auth", "mtls",
            )  # fmt: skip
            procs.append(srv)
            with httpx.Client(verify=client_context(ca_crt), timeout=3) as c:
                _wait(lambda: c.get(url + "/healthz").status_code == 200, "server up", procs=procs)
            api = Client(url, token_file=tmp_path / "server" / "admin-token", ca_file=ca_crt)
            devices = []
            for i in range(2):
                state = tmp_path / f"agent{i}"
                tok = api.create_enrollment_token()["token"]
                r = subprocess.run(
                    [*EF, "agent", "enroll", "--server", url, "--token", tok, "--state", str(state),
                     "--root", str(tmp_path / "repo" / "metadata" / "1.root.json"), "--ca", str(ca_crt), "--json"],
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                assert r.returncode == 0, r.stdout + r.stderr
                devices.append(json.loads(r.stdout)["device_id"])
                # enrollment ends by reporting once over mutual TLS: the device is online, not pending
                assert api.device(devices[-1])["status"] == "online"
                log = open(tmp_path / f"agent{i}.log", "wb")  # noqa: SIM115
                procs.append(
                    subprocess.Popen(
                        [*EF, "agent", "run", "--state", str(state), "--no-progress"],
                        stdout=log, stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
            _wait(
                lambda: all(api.device(d)["status"] == "online" for d in devices),
                "both agents heartbeating over mutual TLS",
                procs=procs,
            )

            # revoked there: refused on its next request; the other device carries on
            r = subprocess.run(
                [*EF, "devices", "revoke", devices[0], "--server", url, "--ca", str(ca_crt),
                 "--token-file", str(tmp_path / "server" / "admin-token")],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            journal = tmp_path / "agent0" / "journal.json"
            _wait(
                lambda: "revoked" in (json.loads(journal.read_text()).get("last_error") or ""),
                "the revoked agent told so",
                procs=procs,
            )
            seen = api.device(devices[1])["last_seen"]
            _wait(
                lambda: api.device(devices[1])["last_seen"] > seen, "the other agent still heard", procs=procs
            )
            assert api.device(devices[0])["status"] == "revoked"

            # a man in the middle with a certificate from another CA: the agent does not talk to it
            rogue = CertificateAuthority.init(tmp_path / "rogue")
            rogue.issue_server([host.addr]).write(tmp_path / "rogue.crt", tmp_path / "rogue.key")
            mitm = _server(host, tmp_path, "mitm", 8444, tmp_path / "rogue.crt", tmp_path / "rogue.key")
            procs.append(mitm)
            with httpx.Client(verify=client_context(tmp_path / "rogue" / "ca.crt"), timeout=3) as c:
                _wait(
                    lambda: c.get(f"https://{host.addr}:8444/healthz").status_code == 200,
                    "mitm up",
                    procs=procs,
                )
            tok = api.create_enrollment_token()["token"]
            r = subprocess.run(
                [*EF, "agent", "enroll", "--server", f"https://{host.addr}:8444", "--token", tok,
                 "--state", str(tmp_path / "agent-mitm"), "--ca", str(ca_crt),
                 "--root", str(tmp_path / "repo" / "metadata" / "1.root.json")],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
            # an enrolled agent pointed at it: no heartbeat gets through, nothing is acted on
            _stop([procs[2]])  # agent1's daemon holds its state directory's lock
            env = {**os.environ, "EDGEFLEET_AGENT_SERVER_URL": f"https://{host.addr}:8444"}
            r = subprocess.run(
                [*EF, "agent", "run", "--state", str(tmp_path / "agent1"), "--once", "--no-progress"],
                capture_output=True, text=True, timeout=120, env=env,
            )  # fmt: skip
            assert "CERTIFICATE_VERIFY_FAILED" in r.stdout + r.stderr
            assert api.device(devices[1])["status"] in ("online", "stale")
        finally:
            _stop(procs)
