"""``edgefleet demo`` end to end: a real server and real agent processes on loopback, three releases.

The demo runs as a subprocess, as README shows it (with fewer devices, TLS on as by default) while two
processes keep the CPU busy beside it: the gates must not mistake a busy machine for a slow release. The
test reads its JSON summary, checks what the fleet's own state says, that the agents authenticated with
their own certificates (mutual TLS), and that no process it started is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _processes_under(path: Path) -> list[psutil.Process]:
    """Live processes whose command line names ``path`` (the demo's server and agents do)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                str(path) in a for a in p.info["cmdline"] or []
            ):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _demo(tmp: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli", "demo", "--dir", str(tmp), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )


_HOG = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("demo") / "state"
    # two processes spinning beside the demo (each ends by itself at its deadline, and is stopped below)
    hogs = [subprocess.Popen([sys.executable, "-c", _HOG.format(s=380)]) for _ in range(2)]
    try:
        p = _demo(d, "--devices", "4", "--seed", "1", "--json")
        try:
            out, err = p.communicate(timeout=360)
        finally:
            if p.poll() is None:
                p.kill()
        assert all(h.poll() is None for h in hogs), "the CPU hog stopped before the demo ended"
    finally:
        for h in hogs:
            h.terminate()
        for h in hogs:
            h.wait(10)
    assert p.returncode == 0, f"demo failed ({p.returncode}):\n{err[-4000:]}"
    return json.loads(out), d, subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_good_release_reaches_everyone_through_every_wave(demo_run):
    s, _, _ = demo_run
    assert s["ok"] is True
    good = next(r for r in s["rollouts"] if r["version"] == "1.1.0")
    assert good["state"] == "completed"
    assert good["wave_reached"] == len(good["waves"]) and good["waves"][-1] == 100.0
    assert [w["result"] for w in good["wave_results"]] == ["passed"] * len(good["waves"])
    # each wave was judged against the devices still on 1.0.0 (the last one against the recorded baseline)
    assert good["wave_results"][0]["reference"] == "control"
    assert good["wave_results"][0]["gates"]["confidence_ratio"]["status"] == "pass"


def test_bad_release_is_halted_in_its_first_wave_and_rolled_back(demo_run):
    s, _, _ = demo_run
    bad = next(r for r in s["rollouts"] if r["version"] == "1.2.0")
    assert bad["state"] == "rolled_back"
    assert bad["wave_reached"] == 1
    assert "confidence_ratio" in bad["failed_gates"] and "confidence_ratio" in bad["reason"]
    gate = bad["wave_results"][0]["gates"]["confidence_ratio"]
    assert gate["status"] == "fail" and gate["value"] < gate["threshold"]
    assert bad["wave_results"][0]["reference"] == "control"
    # containment: only the first wave ever ran it, and nobody runs it at the end
    assert 0 < len(bad["devices_ever_ran"]) <= bad["first_wave_devices"] < len(s["devices"])
    assert bad["devices_on_bad_at_end"] == 0
    assert set(s["final_versions"].values()) == {"1.1.0"}


def test_agents_used_mutual_tls_with_their_own_certificates(demo_run):
    from edgefleet.server import ServerConfig, start_server
    from edgefleet.tls import cert_common_name, client_context

    s, d, _ = demo_run
    assert s["server"]["url"].startswith("https://127.0.0.1:")
    assert s["server"]["device_auth"] == "mtls"
    ca = Path(s["server"]["ca_file"])
    assert ca == d / "tls" / "ca.crt" and ca.is_file()
    log = (d / "logs" / "server.log").read_text()
    assert "on https://127.0.0.1:" in log and "device auth: mtls" in log  # certificates only, no tokens
    for dev in s["devices"]:
        state = Path(dev["state_dir"])
        assert cert_common_name((state / "device.pem").read_bytes()) == dev["id"]  # from its own CSR
        assert (state / "ca.crt").read_bytes() == ca.read_bytes()  # the demo's CA is pinned
        assert json.loads((state / "credentials.json").read_text())["server_url"] == s["server"]["url"]

    # The control plane again, as the demo ran it: a device's token without its certificate is refused
    # (the agents reached 1.1.0 by heartbeats that could only have been authenticated by certificate).
    cfg = ServerConfig(
        data_dir=d / "server",
        repo_dir=d / "repository",
        keys_dir=d / "server" / "keys",
        tls_cert=d / "tls" / "server.crt",
        tls_key=d / "tls" / "server.key",
        ca_dir=d / "tls",
        device_auth="mtls",
    )
    dev = s["devices"][0]
    state = Path(dev["state_dir"])
    pem = state / "device.pem"
    token = json.loads((state / "credentials.json").read_text())["device_token"]
    beat = {"device_id": dev["id"], "state": "idle"}
    with start_server(cfg) as srv:
        url = f"{srv.url}/v1/devices/{dev['id']}/heartbeat"
        with httpx.Client(verify=client_context(ca)) as c:
            r = c.post(url, json=beat, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401 and "mutual TLS" in r.json()["message"]
        with httpx.Client(verify=client_context(ca, cert=pem, key=pem)) as c:
            assert c.post(url, json=beat).status_code == 200
        with pytest.raises(httpx.HTTPError):  # and nothing in clear text
            httpx.post(url.replace("https:", "http:"), json=beat, timeout=5)


def test_state_directory_agrees_with_the_summary(demo_run):
    from edgefleet.agent import agent_status

    s, d, _ = demo_run
    assert (d / "summary.json").is_file() and (d / "repository" / "metadata" / "root.json").is_file()
    ran_bad = set()
    for dev in s["devices"]:
        st = agent_status(Path(dev["state_dir"]))
        assert st["active"]["version"] == "1.1.0", dev["name"]
        if any(e.get("event") == "activated" and e.get("version") == "1.2.0" for e in st["history"]):
            ran_bad.add(dev["name"])
    assert ran_bad and ran_bad <= set(
        next(r for r in s["rollouts"] if r["version"] == "1.2.0")["devices_ever_ran"]
    )


def test_every_process_is_gone(demo_run):
    s, d, _ = demo_run
    started = s["processes"]["started"]
    assert len(started) == 1 + len(s["devices"])  # the server and one agent per device
    assert s["processes"]["running"] == []
    for p in started:
        assert not psutil.pid_exists(p["pid"]) or psutil.Process(p["pid"]).status() == psutil.STATUS_ZOMBIE
    assert _processes_under(d) == []


def test_existing_directory_that_is_no_demo_is_refused(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "data.txt").write_text("keep me")
    r = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "demo", "--dir", str(d)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert "not an edgefleet demo directory" in r.stderr
    assert (d / "data.txt").read_text() == "keep me" and sorted(p.name for p in d.iterdir()) == ["data.txt"]


def test_ctrl_c_stops_every_process(tmp_path):
    d = tmp_path / "state"
    p = _demo(
        d, "--devices", "2", "--json", "--insecure-http"
    )  # clear text, as before TLS; narration on stderr
    try:
        deadline = time.monotonic() + 240
        # wait until the server and both agents run, then interrupt as a terminal's Ctrl-C would
        while len(_processes_under(d)) < 4 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.5)
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert len(_processes_under(d)) >= 3
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-3000:]
    assert "every process the demo started is stopped" in err
    assert _processes_under(d) == []
